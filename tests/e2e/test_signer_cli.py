"""`aura sign-bridges` against a real signer: --from-runtime, its errors, and the push request
to a real router."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from aura_common.pki.manifest import SignedManifest, parse_body
from aura_common.state import runtime
from aura_lab import signer
from aura_lab.netns import Lab
from aura_lab.signer import SignerServer

pytestmark = pytest.mark.e2e

server, running = signer.server, signer.running  # the fixtures


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to stand for a transport in its runtime.json."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def write_runtime(server: SignerServer, transports: dict[str, dict[str, Any]]) -> None:
    for name, entry in transports.items():
        (server.state / "transports" / name).mkdir(parents=True, exist_ok=True)
        doc = {"version": 2, "transport": name, **entry}
        (server.state / "transports" / name / "runtime.json").write_text(json.dumps(doc))


def entry(pid: int, *bound: str) -> dict[str, Any]:
    return {"bound": list(bound), "bound_at": "2026-01-01T00:00:00Z", "pid": pid,
            "activated": False}  # fmt: skip


def test_from_runtime_uses_public_host_and_bound_ports(
    running: SignerServer, sleeper: subprocess.Popen[bytes]
) -> None:
    write_runtime(running, {
        "udp": entry(sleeper.pid, "0.0.0.0:8450", "[::]:8450"),
        "tcp": entry(sleeper.pid, "[::]:8443"),
    })  # fmt: skip
    result = running.aura("sign-bridges", "--from-runtime")
    assert "endpoint vpn.test:udp=8450:tcp=8443" in result.stdout
    assert "quic is enabled but has no" in result.stderr
    manifest = parse_body(
        SignedManifest.from_json((running.state / "signer" / "manifest.json").read_text()).body
    )
    assert manifest.bridges == ("vpn.test:8450", "vpn.test:8443")


def test_from_runtime_with_runtime_record_of_this_process(running: SignerServer) -> None:
    runtime.record_bound(running.state / "transports", "quic", ["[::]:9444"], activated=True)
    result = running.aura("sign-bridges", "--from-runtime")
    assert "endpoint vpn.test:quic=9444" in result.stdout


def test_from_runtime_errors(server: SignerServer) -> None:
    result = server.aura("sign-bridges", "--from-runtime", check=False)
    assert result.returncode == 1
    assert f"{server.state / 'transports'}: no runtime file" in result.stderr

    dead = subprocess.Popen(["true"])
    dead.wait()
    write_runtime(server, {"tcp": entry(dead.pid, "[::]:8443")})
    result = server.aura("sign-bridges", "--from-runtime", check=False)
    assert result.returncode == 1
    assert f"tcp/runtime.json: pid: process {dead.pid} is not running" in result.stderr
    assert "stale" in result.stderr

    write_runtime(server, {"tcp": {"bound": "nope"}})
    result = server.aura("sign-bridges", "--from-runtime", check=False)
    assert "tcp/runtime.json: bound" in result.stderr


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--endpoints", "vpn.test:ssh=22"], "--endpoints 'vpn.test:ssh=22': bad transport 'ssh'"),
        (["--endpoints", "vpn.test:tcp=99999"], "expected a port number 1..65535"),
        (["--endpoints", "vpn.test:tcp=1", "--expires", "0"], "--expires 0: expected 1..3650"),
    ],
)
def test_operator_errors_name_the_option(
    server: SignerServer,
    argv: list[str],
    complaint: str,
) -> None:
    result = server.aura("sign-bridges", *argv, check=False)
    assert result.returncode == 1
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr


def test_router_is_told_to_push(running: SignerServer, lab: Lab) -> None:
    ns = lab.namespace("srv")
    config = running.config.read_text().replace("name: aura0", f"name: {lab.prefix}t")
    running.config.write_text(config)
    router_log = running.root / "router.log"
    router = lab.spawn(ns, [sys.executable, "-m", "services.router", "--config",
                            str(running.config)], log=router_log)  # fmt: skip
    router_socket = running.run_dir / "router.sock"
    deadline = time.monotonic() + 20
    while not router_socket.exists():
        assert router.poll() is None, router_log.read_text()
        assert time.monotonic() < deadline, "the router socket did not appear"
        time.sleep(0.05)
    result = running.aura("sign-bridges", "--endpoints", "vpn.test:udp=8443")
    assert "the router pushes it to connected Aura clients" in result.stdout
    assert "bridge manifest pushed" in router_log.read_text()
