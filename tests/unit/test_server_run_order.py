"""`aura server run` starts QUIC only once the UDP transport has recorded its port."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from aura_common.state import runtime
from services.cli.server import Supervisor

ROOT = Path(__file__).resolve().parents[2]


def late_binder(transports_dir: str, name: str, delay: float) -> list[str]:
    """A process that records its port only after `delay`, as a slow start on a loaded host."""
    return [sys.executable, "-c", (
        "import sys, time\n"
        "from aura_common.state import runtime\n"
        f"time.sleep({delay})\n"
        f"runtime.record_bound({transports_dir!r}, {name!r}, ['[::]:8444'], False)\n"
        "sys.stdin.read()\n"
    )]


@pytest.fixture
def supervisor(tmp_path: Path) -> Supervisor:
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example", "state_dir": str(tmp_path / "state"),
        "runtime_dir": str(tmp_path / "run"),
    })  # fmt: skip
    Path(config.transports_dir).mkdir(parents=True)
    return Supervisor(config, "server.yaml", ["udp", "tcp", "quic"], verbose=False)


def run_start_all(supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch,
                  exits_early: bool = False) -> dict[str, set[str]]:
    """Start every service as a late binder; what the runtime files held as each started."""
    transports_dir = supervisor.config.transports_dir
    seen: dict[str, set[str]] = {}

    def start(name: str) -> None:
        seen[name] = set(runtime.read_runtime(transports_dir))
        argv = [sys.executable, "-c", "pass"] if exits_early else late_binder(
            transports_dir, name, 0.5)
        supervisor.children[name] = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE)

    monkeypatch.setattr(supervisor, "start", start)
    try:
        supervisor.start_all(supervisor.config.router_socket)
    finally:
        for child in supervisor.children.values():
            child.kill()
            child.wait()
    return seen


def test_quic_starts_after_udp_has_recorded_its_port(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = run_start_all(supervisor, monkeypatch)
    assert seen == {"udp": set(), "tcp": {"udp"}, "quic": {"udp"}}


def test_a_udp_transport_that_exits_does_not_hold_up_the_others(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    seen = run_start_all(supervisor, monkeypatch, exits_early=True)
    assert seen == {"udp": set(), "tcp": set(), "quic": set()}
    assert time.monotonic() - started < 20, "waited out the whole timeout for a dead process"
