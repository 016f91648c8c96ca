"""runtime.json: bound addresses, one file per transport in its own folder, validated on read."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.config import ServerConfig
from aura_common.errors import ConfigError
from aura_common.state import runtime
from aura_common.state.atomic import locked, write_atomic
from services.quic.main import ports_of_udp_transport
from tests.unit.strategies import json_values

REPO = str(Path(__file__).resolve().parents[2])


def test_missing_files_read_as_nothing_bound(tmp_path: Path) -> None:
    assert runtime.read_runtime(tmp_path / "transports") == {}


def test_record_and_forget(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "transports"
    runtime.record_bound(folder, "udp", ["0.0.0.0:8443", "[::]:8443"], activated=False)
    runtime.record_bound(folder, "quic", ["[::]:8445"], activated=True)
    assert (folder / "udp" / "runtime.json").is_file()  # each in its own folder
    entries = runtime.read_runtime(folder)
    udp = entries["udp"]
    assert udp["bound"] == ["0.0.0.0:8443", "[::]:8443"]
    assert udp["pid"] == os.getpid()
    assert udp["activated"] is False
    bound_at = datetime.datetime.fromisoformat(udp["bound_at"])
    assert bound_at.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.UTC) - bound_at).total_seconds()) < 60
    assert entries["quic"]["activated"] is True
    runtime.forget(folder, "udp")
    runtime.forget(folder, "tcp")  # never recorded: nothing happens
    assert set(runtime.read_runtime(folder)) == {"quic"}


def test_a_file_in_one_transports_folder_speaks_for_that_transport_only(tmp_path: Path) -> None:
    """A transport that writes another's entry into its own file is not believed: readers take
    each transport's entry from its own folder, which only its account may write."""
    folder = tmp_path / "transports"
    runtime.record_bound(folder, "udp", ["[::]:8443"], activated=False)
    runtime.record_bound(folder, "tcp", ["[::]:8443"], activated=False)
    lie = json.loads((folder / "tcp" / "runtime.json").read_text()) | {"transport": "udp"}
    (folder / "tcp" / "runtime.json").write_text(json.dumps(lie))
    with pytest.raises(ConfigError) as info:
        runtime.read_runtime(folder)
    assert info.value.key == "transport"
    assert set(runtime.read_runtime_for_service(folder)) == {"udp"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant files as another account")
def test_root_reads_a_transports_file_bounded_and_never_through_a_link(tmp_path: Path) -> None:
    """What a compromised transport can leave in its folder for root (`aura status`,
    `sign-bridges --from-runtime`) to read: a huge file, a link to a file only root may
    read, a FIFO. Each is refused at once, naming the file."""
    folder = tmp_path / "transports"
    for transport in ("udp", "tcp", "quic"):
        (folder / transport).mkdir(parents=True)
        os.chown(folder / transport, 65534, 65534)
    (folder / "udp" / "runtime.json").write_bytes(b" " * (runtime.RUNTIME_FILE_LIMIT + 1))
    shadow = tmp_path / "shadow"
    shadow.write_text('{"version": 2}')
    shadow.chmod(0o600)
    (folder / "tcp" / "runtime.json").symlink_to(shadow)
    os.mkfifo(folder / "quic" / "runtime.json")
    for transport, why in (("udp", "at most"), ("tcp", "symlink"), ("quic", "regular file")):
        with pytest.raises(ConfigError, match=why) as info:
            runtime.read_entry(folder, transport)
        assert runtime.runtime_file(folder, transport) in str(info.value)
    assert runtime.read_runtime_for_service(folder) == {}


def test_damaged_file_is_named_on_read_and_replaced_on_write(tmp_path: Path) -> None:
    folder = tmp_path / "transports"
    (folder / "udp").mkdir(parents=True)
    path = folder / "udp" / "runtime.json"
    path.write_text('{"version": 2, "transport": "udp", "bound": ["nowhere"]}')
    with pytest.raises(ConfigError) as info:
        runtime.read_runtime(folder)
    assert info.value.key == "bound"
    assert str(path) in str(info.value)
    runtime.record_bound(folder, "udp", ["[::]:8443"], activated=False)
    assert set(runtime.read_runtime(folder)) == {"udp"}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"transport": "tcp"}, "transport"),
        ({"bound": "x"}, "bound"),
        ({"bound": [], "bound_at": "yesterday"}, "bound_at"),
        ({"bound": [], "bound_at": "2024-01-01T00:00:00Z", "pid": -1}, "pid"),
        ({"bound": [], "bound_at": "2024-01-01T00:00:00Z", "pid": 5, "activated": 1},
         "activated"),
    ],
)  # fmt: skip
def test_bad_entries_name_the_key(entry: dict[str, object], key: str) -> None:
    data = json.dumps({"version": 2, "transport": "udp", **entry}).encode()
    with pytest.raises(ConfigError) as info:
        runtime.parse_runtime(data, "runtime.json", "udp")
    assert info.value.key == key




@settings(max_examples=150, deadline=None)
@given(
    json_values
    | st.fixed_dictionaries({"version": st.just(2), "transport": st.just("udp"),
                             "bound": json_values, "bound_at": json_values})
    | st.dictionaries(st.sampled_from(["version", "transport", "bound", "bound_at", "pid",
                                       "activated"]), json_values)
)  # fmt: skip
def test_garbage_raises_only_config_error(doc: object) -> None:
    with contextlib.suppress(ConfigError):
        runtime.parse_runtime(json.dumps(doc).encode(), "runtime.json", "udp")


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
        "from aura_common.state.atomic import locked\n"
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
    udp_file = runtime.runtime_file(config.transports_dir, "udp")
    Path(udp_file).parent.mkdir(parents=True)
    Path(udp_file).write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="aura_common.state.runtime"):
        assert ports_of_udp_transport(config) == {config.transports.udp.port}
    [record] = [r for r in caplog.records if r.name == "aura_common.state.runtime"]
    assert record.levelno == logging.WARNING
    assert udp_file in record.getMessage()
    runtime.record_bound(config.transports_dir, "udp", ["[::]:8444"], activated=False)
    assert set(runtime.read_runtime(config.transports_dir)) == {"udp"}


def test_ports_of_udp_transport_reads_a_sound_runtime_file(tmp_path: Path) -> None:
    config = _quic_config(tmp_path)
    runtime.record_bound(config.transports_dir, "udp", ["[::]:8450"], activated=False)
    assert ports_of_udp_transport(config) == {config.transports.udp.port, 8450}


@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EROFS])
def test_a_failed_runtime_write_is_logged_not_raised(
    tmp_path: Path, errno_: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "transports"
    runtime.record_bound(folder, "udp", ["[::]:8443"], activated=False)
    path = Path(runtime.runtime_file(folder, "udp"))
    before = path.read_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(runtime, "write_atomic", refuse)
    monkeypatch.setattr(runtime.os, "unlink", refuse)
    with caplog.at_level(logging.ERROR, logger="aura_common.state.runtime"):
        runtime.record_bound(folder, "udp", ["[::]:8444"], activated=False)
        runtime.forget(folder, "udp")
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
    runtime.record_bound(tmp_path, "udp", ["[::]:8443"], activated=False)
    bound_at = runtime.read_runtime(tmp_path)["udp"]["bound_at"]
    assert bound_at.endswith("Z") and len(bound_at) == len("2026-01-01T00:00:00Z"), bound_at
