"""A compromised transport: a process running as the UDP transport's account tries every
other role on the router, the signer, and other peers' traffic, and is refused each time.

The router and signer run as root here (this host's Python lives where other accounts cannot
execute it); their roles come from `users:` in the config, which names throw-away system
users, and the adversary is a forked child that drops to those users' uids. The booted
package (tests/system/test_package.py) repeats this with the real service accounts.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.users import as_user

pytestmark = pytest.mark.e2e

AURA = [sys.executable, "-m", "services.cli.main"]
ALICE_V4 = "10.77.0.2"


@dataclass
class Accounts:
    service_gid: int
    admin_group: str
    udp: pwd.struct_passwd
    tcp: pwd.struct_passwd
    operator: pwd.struct_passwd


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    tag = uuid.uuid4().hex[:6]
    service, admin = f"aura-ts-{tag}", f"aura-ta-{tag}"
    users = {role: f"aura-t{role[0]}-{tag}" for role in ("udp", "tcp", "operator")}
    made: list[list[str]] = []
    try:
        for group in (service, admin):
            subprocess.run(["groupadd", "--system", group], check=True)
            made.append(["groupdel", group])
        for role, name in users.items():
            extra = ["-G", admin] if role == "operator" else []
            subprocess.run(["useradd", "--system", "--no-create-home", "-g", service, *extra,
                            name], check=True)  # fmt: skip
            made.insert(0, ["userdel", name])
        yield Accounts(pwd.getpwnam(users["udp"]).pw_gid, admin,
                       *(pwd.getpwnam(users[r]) for r in ("udp", "tcp", "operator")))
    finally:
        for command in made:
            subprocess.run(command, check=False, capture_output=True)


@dataclass
class Running:
    folder: Path
    router_log: Path
    signer_log: Path

    @property
    def router_socket(self) -> str:
        return str(self.folder / "run" / "router.sock")

    @property
    def signer_socket(self) -> str:
        return str(self.folder / "run" / "signer.sock")


@pytest.fixture
def running(lab: Lab, accounts: Accounts) -> Iterator[Running]:
    # Not pytest's tmp_path: the other accounts must be able to reach the sockets.
    folder = Path(tempfile.mkdtemp(prefix="aura-accounts-"))
    folder.chmod(0o755)
    try:
        config = folder / "server.yaml"
        aura = [*AURA, "--config", str(config)]
        subprocess.run([*aura, "server", "init", "--public-host", "198.51.100.1",
                        "--state-dir", str(folder / "state"), "--runtime-dir",
                        str(folder / "run")], check=True, capture_output=True)  # fmt: skip
        document = yaml.safe_load(config.read_text())
        document["admin_group"] = accounts.admin_group
        document["users"].update(udp=accounts.udp.pw_name, tcp=accounts.tcp.pw_name)
        config.write_text(yaml.safe_dump(document))
        subprocess.run([*aura, "provision-client", "alice", "--address", ALICE_V4,
                        "-o", str(folder / "alice.yaml")], check=True, capture_output=True)
        ns = lab.namespace("srv")
        result = Running(folder, folder / "router.log", folder / "signer.log")
        for name, log in (("router", result.router_log), ("signer", result.signer_log)):
            lab.spawn(ns, [sys.executable, "-m", f"services.{name}", "--config", str(config)],
                      log=log)
        lab.wait_for(lambda: os.path.exists(result.router_socket)
                     and os.path.exists(result.signer_socket), timeout=30,
                     what="the router and signer sockets")  # fmt: skip
        yield result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hello(path: str, role: str, *then: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Say hello as `role`; if accepted, send `then` and collect what comes back."""

    def action() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            try:
                sock.connect(path)
            except OSError as error:
                return {"errno": error.errno}
            # A caller with no role there is turned away as it connects: the answer waits
            # even when the hello came too late to be sent.
            with contextlib.suppress(BrokenPipeError):
                sock.send(msgpack.packb({"t": "hello", "v": 1, "role": role}))
            reply = msgpack.unpackb(sock.recv(1 << 20))
            outcome: dict[str, Any] = {"t": reply["t"], "message": reply.get("message")}
            if reply["t"] != "hello":
                return outcome
            for frame in then:
                sock.send(msgpack.packb(frame))
            sock.settimeout(1)
            frames = []
            try:
                while True:
                    frames.append(msgpack.unpackb(sock.recv(1 << 20)))
            except TimeoutError:
                pass
            outcome["frames"] = [f["t"] for f in frames]
            outcome["peers"] = [p["name"] for f in frames if f["t"] == "peers" for p in f["peers"]]
            return outcome

    return action


def ipv4_packet(source: str) -> bytes:
    header = bytearray(20)
    header[0], header[8], header[9] = 0x45, 64, 17
    header[12:16] = bytes(int(p) for p in source.split("."))
    header[16:20] = bytes([198, 51, 100, 9])
    return bytes(header)


def wait_for_text(path: Path, text: str) -> str:
    deadline = time.monotonic() + 10
    while text not in (content := path.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert text in content, f"{text!r} not in {path}:\n{content}"
    return content


def test_a_transport_account_is_refused_every_other_role_and_peer(
    running: Running, accounts: Accounts
) -> None:
    udp = accounts.udp
    for role in ("tcp", "quic", "admin"):
        outcome = as_user(udp, hello(running.router_socket, role))
        assert outcome == {"t": "error", "message":
                           f"permission denied: uid {udp.pw_uid} is the udp account, not {role}"}
        wait_for_text(running.router_log, f"(uid {udp.pw_uid}, gid {udp.pw_gid}) as {role}")
    # The TCP account may not pass for the UDP transport either.
    outcome = as_user(accounts.tcp, hello(running.router_socket, "udp"))
    assert outcome["t"] == "error"

    # The signer: its socket belongs to the admin group, and behind that it checks the uid.
    assert as_user(udp, hello(running.signer_socket, "admin")) == {"errno": 13}
    os.chmod(running.signer_socket, 0o666)
    outcome = as_user(udp, hello(running.signer_socket, "admin"))  # turned away unread
    assert outcome == {"t": "error",
                       "message": "permission denied: this account may not connect here"}
    wait_for_text(running.signer_log,
                  f"(uid {udp.pw_uid}, gid {udp.pw_gid}): permission denied: this account")
    assert not (running.folder / "state" / "signer" / "manifest.json").exists()

    # As itself it is a transport: it learns the peers, but cannot speak for alice, who has
    # no session on it, nor end sessions it does not hold.
    outcome = as_user(udp, hello(
        running.router_socket, "udp",
        {"t": "session_down", "peer": "alice"},
        {"t": "pkts", "at": 0, "batches": [["alice", [ipv4_packet(ALICE_V4)]]]},
    ))  # fmt: skip
    assert outcome["t"] == "hello" and outcome["peers"] == ["alice"]
    wait_for_text(running.router_log, "transport udp (pid ")
    wait_for_text(running.router_log, "sent packets for 'alice', which has no session there")


def test_no_local_user_can_hold_the_router_socket_against_a_transport(
    running: Running, accounts: Accounts
) -> None:
    """router.sock is open to every local user (the uid decides): neither a stranger nor an
    operator sitting on more connections than the router keeps waiting for a hello locks
    the transport out."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    holders = []
    for user in (nobody, accounts.operator):
        pid = os.fork()
        if pid == 0:  # hold 80 silent connections until the parent closes the pipe
            os.close(read_end)
            os.initgroups(user.pw_name, user.pw_gid)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            held = []
            for _ in range(80):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                with contextlib.suppress(OSError):
                    sock.connect(running.router_socket)
                held.append(sock)
            os.write(write_end, b"x")
            time.sleep(30)  # killed by the parent
            os._exit(0)
        holders.append(pid)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as ready:
            assert ready.read(2) == b"xx"
        time.sleep(0.5)  # the router has accepted (or turned away) all of them
        outcome = as_user(accounts.udp, hello(running.router_socket, "udp"))
        assert outcome["t"] == "hello" and outcome["peers"] == ["alice"]
        # The operator's stuck connections cost it alone its share (4), for 5 s each.
        outcome = as_user(accounts.operator, hello(running.router_socket, "admin"))
        assert outcome["t"] == "error" and "waiting for their hello already" in (
            outcome["message"])
        wait_for_text(running.router_log, f"(uid {nobody.pw_uid}, gid {nobody.pw_gid}): "
                      "permission denied: this account may not connect here")
    finally:
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_an_admin_group_member_may_ask_for_status_and_a_manifest(
    running: Running, accounts: Accounts
) -> None:
    operator = accounts.operator
    outcome = as_user(operator, hello(running.router_socket, "admin", {"t": "status"}))
    assert outcome["frames"] == ["status_reply"]
    outcome = as_user(operator, hello(running.router_socket, "udp"))
    assert outcome["t"] == "error" and f"uid {operator.pw_uid} may not act as udp" in (
        outcome["message"])
    request = {"t": "sign", "endpoints": [{"host": "vpn.test", "tcp": 443}], "expires_days": 7,
               "server_public_key": bytes(32)}
    outcome = as_user(operator, hello(running.signer_socket, "admin", request))
    assert outcome["frames"] == ["signed"]


def transport_session(path: str, *then: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """Connect as the udp transport; report the fields of the peers it was sent, send `then`,
    and report the frame types that came back."""

    def action() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.send(msgpack.packb({"t": "hello", "v": 1, "role": "udp"}))
            assert msgpack.unpackb(sock.recv(1 << 20))["t"] == "hello"
            peers = msgpack.unpackb(sock.recv(1 << 20))
            for frame in then:
                sock.send(msgpack.packb(frame, use_bin_type=True))
            sock.settimeout(1)
            frames = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(msgpack.unpackb(sock.recv(1 << 20))["t"])
            return {"peer_fields": sorted({k for p in peers["peers"] for k in p}),
                    "frames": frames}

    return action


def readable(path: Path) -> Callable[[], dict[str, Any]]:
    def action() -> dict[str, Any]:
        try:
            path.read_bytes()
        except OSError as error:
            return {"errno": error.errno}
        return {"read": True}

    return action


def status_of(path: str) -> dict[str, Any]:
    """The router's status as root (who may act as admin)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.send(msgpack.packb({"t": "hello", "v": 1, "role": "admin"}))
        msgpack.unpackb(sock.recv(1 << 20))
        sock.send(msgpack.packb({"t": "status"}))
        return msgpack.unpackb(sock.recv(1 << 20))


def test_a_transport_account_holds_no_key_and_cannot_claim_a_session(
    running: Running, accounts: Accounts
) -> None:
    udp = accounts.udp
    registry = json.loads((running.folder / "state" / "router" / "peers.json").read_text())
    assert registry["peers"][0]["preshared_key"]  # alice has one: it must not leak
    # Neither the static key nor the registry (preshared keys) is readable by the account...
    registry_file = running.folder / "state" / "router" / "peers.json"
    for secret in (running.folder / "server.key", registry_file):
        assert as_user(udp, readable(secret)) == {"errno": 13}, secret
    assert as_user(udp, readable(running.folder / "server.pub")) == {"read": True}
    # ... nor sent to it: the peers frame carries public keys, and a MAC over each peer's
    # keys (which changes when they do).
    forged = {"t": "session_up", "peer": "alice", "endpoint": "192.0.2.66:51820",
              "handshake_at": time.time(), "ticket": bytes(24)}
    outcome = as_user(udp, transport_session(running.router_socket, forged))
    assert outcome["peer_fields"] == ["keys", "name", "public_key"]
    # A session it did not carry a handshake for is refused: no welcome, no route to alice.
    assert "pkts" not in outcome["frames"]
    wait_for_text(running.router_log, "session_up for alice without the ticket of a handshake "
                                      "the router answered for it")
    alice = next(p for p in status_of(running.router_socket)["peers"] if p["name"] == "alice")
    assert not alice["connected"]
