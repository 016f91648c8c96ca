"""sd_notify and socket activation, exercised the way systemd does it: real sockets."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from aura_common.service import systemd

REPO = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                 "LISTEN_FDNAMES"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_without_systemd_everything_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready("up") is False
    assert systemd.watchdog_interval() is None
    assert systemd.listen_fds() == {}


def test_notify_to_a_path_socket(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _receiver(path) as manager:
        clean_env.setenv("NOTIFY_SOCKET", path)
        assert systemd.ready("listening on udp [::]:8443")
        assert manager.recv(4096).decode().split("\n") == [
            "READY=1", f"MAINPID={os.getpid()}", "STATUS=listening on udp [::]:8443",
        ]  # fmt: skip
        assert systemd.status("3 peers")
        assert manager.recv(4096) == b"STATUS=3 peers"
        assert systemd.status("config /etc/aura/señal.yaml")  # systemd reads UTF-8
        assert manager.recv(4096) == "STATUS=config /etc/aura/señal.yaml".encode()
        assert systemd.stopping()
        assert manager.recv(4096) == b"STOPPING=1"
        assert systemd.watchdog_ping()
        assert manager.recv(4096) == b"WATCHDOG=1"


def test_notify_to_an_abstract_socket(clean_env: pytest.MonkeyPatch) -> None:
    name = f"aura-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as manager:
        clean_env.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert manager.recv(4096) == b"READY=1"


def test_notify_when_the_manager_is_gone(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WATCHDOG_USEC", "3000000")
    assert systemd.watchdog_interval() == 3.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 3.0
    clean_env.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None
    clean_env.delenv("WATCHDOG_PID")
    clean_env.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval() is None
    clean_env.setenv("WATCHDOG_USEC", "soon")
    assert systemd.watchdog_interval() is None


CHILD = """
import json, os, socket
from aura_common.service import systemd
names = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
fds = systemd.listen_fds()
report = {"env_after": [n for n in names if n in os.environ],
          "second_call": len(systemd.listen_fds()), "sockets": {}}
for name, socks in fds.items():
    report["sockets"][name] = [
        {"fd": s.fileno(), "family": s.family.name, "type": s.type.name,
         "port": None if s.family == socket.AF_UNIX else s.getsockname()[1],
         "inheritable": s.get_inheritable()} for s in socks]
for s in fds.get("udp", []):
    host = "::ffff:127.0.0.1" if s.family == socket.AF_INET6 else "127.0.0.1"
    s.sendto(b"hello from the activated socket", (host, int(os.environ["REPLY_PORT"])))
print(json.dumps(report))
"""


def _activate(
    sockets: list[socket.socket], names: str | None, reply_port: int, pid: str = "$$"
) -> dict[str, Any]:
    """Run CHILD with `sockets` as fds 3, 4, ... and LISTEN_* set, as systemd does."""
    fds = [s.fileno() for s in sockets]

    def place_fds() -> None:
        # Move the sources out of the way first, so dup2 onto 3.. cannot clobber one of them.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
        for index, fd in enumerate(high):
            os.dup2(fd, 3 + index)  # the new fd is inherited across exec
            os.close(fd)

    env = {"PYTHONPATH": REPO, "PATH": os.environ.get("PATH", ""), "LISTEN_FDS": str(len(fds)),
           "REPLY_PORT": str(reply_port), "CHILD": CHILD}  # fmt: skip
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    # LISTEN_PID must be the pid of the process that reads it; `exec` keeps the shell's pid.
    result = subprocess.run(
        ["/bin/sh", "-c", f'LISTEN_PID={pid} exec "$0" -c "$CHILD"', sys.executable],
        env=env, preexec_fn=place_fds, close_fds=False, capture_output=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def test_listen_fds_in_a_child_process(clean_env: pytest.MonkeyPatch) -> None:
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.bind(("::", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reply.bind(("127.0.0.1", 0))
    reply.settimeout(10)
    try:
        report = _activate([udp, tcp], "udp:tcp", reply.getsockname()[1])
        assert report["env_after"] == []
        assert report["second_call"] == 0
        assert report["sockets"] == {
            "udp": [{"fd": 3, "family": "AF_INET6", "type": "SOCK_DGRAM",
                     "port": udp.getsockname()[1], "inheritable": False}],
            "tcp": [{"fd": 4, "family": "AF_INET", "type": "SOCK_STREAM",
                     "port": tcp.getsockname()[1], "inheritable": False}],
        }  # fmt: skip
        assert reply.recv(100) == b"hello from the activated socket"
    finally:
        for s in (udp, tcp, reply):
            s.close()


def test_unnamed_sockets_and_foreign_pid(clean_env: pytest.MonkeyPatch) -> None:
    first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    first.bind(("127.0.0.1", 0))
    second = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        report = _activate([first, second], "quic", 1)
        assert [s["type"] for s in report["sockets"]["quic"]] == ["SOCK_DGRAM"]
        assert [s["family"] for s in report["sockets"]["unknown"]] == ["AF_UNIX"]
        # LISTEN_PID names another process: the sockets are not ours to take.
        assert _activate([first], "udp", 1, pid="1")["sockets"] == {}
    finally:
        first.close()
        second.close()
