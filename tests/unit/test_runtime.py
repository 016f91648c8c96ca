"""runtime.json: bound addresses per transport, written under a lock, validated on read."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common import runtime
from aura_common.atomic import locked, write_atomic
from aura_common.config import ServerConfig
from aura_common.errors import ConfigError
from services.quic.main import ports_of_udp_transport

REPO = str(Path(__file__).resolve().parents[2])


def test_missing_file_reads_as_nothing_bound(tmp_path: Path) -> None:
    assert runtime.read_runtime(tmp_path / "runtime.json") == {"version": 1, "transports": {}}


def test_record_and_forget(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runtime.json"
    runtime.record_bound(path, "udp", ["0.0.0.0:8443", "[::]:8443"], activated=False)
    runtime.record_bound(path, "quic", ["[::]:8445"], activated=True)
    doc = runtime.read_runtime(path)
    udp = doc["transports"]["udp"]
    assert udp["bound"] == ["0.0.0.0:8443", "[::]:8443"]
    assert udp["pid"] == os.getpid()
    assert udp["activated"] is False
    bound_at = datetime.datetime.fromisoformat(udp["bound_at"])
    assert bound_at.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - bound_at).total_seconds()) < 60
    assert doc["transports"]["quic"]["activated"] is True
    runtime.forget(path, "udp")
    runtime.forget(path, "tcp")  # never recorded: nothing happens
    assert set(runtime.read_runtime(path)["transports"]) == {"quic"}


def _record(path: str, transport: str) -> None:
    for port in range(100):
        runtime.record_bound(path, transport, [f"[::]:{port + 1}"], activated=False)


def test_concurrent_writers_keep_each_others_entries(tmp_path: Path) -> None:
    path = str(tmp_path / "runtime.json")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record, args=(path, t)) for t in ("udp", "tcp", "quic")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    doc = runtime.read_runtime(path)
    assert {t: e["bound"] for t, e in doc["transports"].items()} == {
        "udp": ["[::]:100"], "tcp": ["[::]:100"], "quic": ["[::]:100"],
    }  # fmt: skip


def test_damaged_file_is_named_on_read_and_replaced_on_write(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    path.write_text('{"version": 1, "transports": {"udp": {"bound": ["nowhere"]}}}')
    with pytest.raises(ConfigError) as info:
        runtime.read_runtime(path)
    assert info.value.key == "transports.udp.bound"
    assert str(path) in str(info.value)
    runtime.record_bound(path, "tcp", ["[::]:8443"], activated=False)
    assert set(runtime.read_runtime(path)["transports"]) == {"tcp"}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"bound": "x"}, "transports.udp.bound"),
        ({"bound": [], "bound_at": "yesterday"}, "transports.udp.bound_at"),
        ({"bound": [], "bound_at": "2024-01-01T00:00:00Z", "pid": -1}, "transports.udp.pid"),
        ({"bound": [], "bound_at": "2024-01-01T00:00:00Z", "pid": 5, "activated": 1},
         "transports.udp.activated"),
    ],
)  # fmt: skip
def test_bad_entries_name_the_key(entry: dict[str, object], key: str) -> None:
    data = json.dumps({"version": 1, "transports": {"udp": entry}}).encode()
    with pytest.raises(ConfigError) as info:
        runtime.parse_runtime(data, "runtime.json")
    assert info.value.key == key


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(
    json_values
    | st.fixed_dictionaries({"version": st.just(1), "transports": json_values})
    | st.fixed_dictionaries(
        {"version": st.just(1),
         "transports": st.dictionaries(st.sampled_from(["udp", "tcp", "quic"]), json_values)}
    )
)  # fmt: skip
def test_garbage_raises_only_config_error(doc: object) -> None:
    with contextlib.suppress(ConfigError):
        runtime.parse_runtime(json.dumps(doc).encode(), "runtime.json")


def test_write_atomic_sets_mode_and_owner_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_text("old")
    write_atomic(path, b"new", mode=0o640, owner=(os.getuid(), os.getgid()))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"new"  # a failed write leaves the old content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.json"]


def test_locked_creates_the_directory_and_excludes_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "new" / "file.json"
    script = (
        "import sys\n"
        "from aura_common.atomic import locked\n"
        "with locked(sys.argv[1]):\n"
        "    print('child got the lock', flush=True)\n"
    )
    with locked(path):
        # A separate process (not a fork, which would share our lock's file description).
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": REPO},
        )  # fmt: skip
        time.sleep(0.5)
        assert child.poll() is None  # still waiting while we hold the lock
    out, _ = child.communicate(timeout=30)
    assert out == b"child got the lock\n"


def _quic_config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(public_host="192.0.2.1", state_dir=str(tmp_path))


@pytest.mark.parametrize("damage", [b"", b"{\"version\": 1, \"transp", b"\xff\xfe", b"[1, 2]",
                                    b'{"version": 1, "transports": {"udp": {"bound": 7}}}'])
def test_a_damaged_runtime_file_does_not_stop_aura_quic(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    config = _quic_config(tmp_path)
    Path(config.transports_dir).mkdir()
    Path(config.runtime_file).write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="aura_common.runtime"):
        assert ports_of_udp_transport(config) == {config.transports.udp.port}
    [record] = [r for r in caplog.records if r.name == "aura_common.runtime"]
    assert record.levelno == logging.WARNING
    assert config.runtime_file in record.getMessage()
    runtime.record_bound(config.runtime_file, "quic", ["[::]:8444"], activated=False)
    assert set(runtime.read_runtime(config.runtime_file)["transports"]) == {"quic"}


def test_ports_of_udp_transport_reads_a_sound_runtime_file(tmp_path: Path) -> None:
    config = _quic_config(tmp_path)
    runtime.record_bound(config.runtime_file, "udp", ["[::]:8450"], activated=False)
    assert ports_of_udp_transport(config) == {config.transports.udp.port, 8450}


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EROFS])
def test_a_failed_runtime_write_is_logged_not_raised(
    tmp_path: Path, errno_: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runtime.json"
    runtime.record_bound(path, "udp", ["[::]:8443"], activated=False)
    before = path.read_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(runtime, "write_atomic", refuse)
    with caplog.at_level(logging.ERROR, logger="aura_common.runtime"):
        runtime.record_bound(path, "tcp", ["[::]:8443"], activated=False)
        runtime.forget(path, "udp")
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.ERROR]
    assert all(str(path) in r.getMessage() and os.strerror(errno_) in r.getMessage()
               for r in caplog.records)
    assert path.read_bytes() == before


def test_listening_ports_keep_transports_whose_addresses_agree_on_one_port() -> None:
    bound = {"udp": ["[::]:8444", "0.0.0.0:8444"], "tcp": ["[::]:8443", "[::1]:9443"],
             "quic": [], "bogus": ["[::]:1"]}
    assert runtime.listening_ports(bound) == {"udp": 8444}
    assert runtime.ports_of(bound["tcp"]) == {8443, 9443}


def test_bound_at_is_spelled_as_the_registry_spells_times(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    runtime.record_bound(path, "udp", ["[::]:8443"], activated=False)
    bound_at = runtime.read_runtime(path)["transports"]["udp"]["bound_at"]
    assert bound_at.endswith("Z") and len(bound_at) == len("2026-01-01T00:00:00Z"), bound_at
