"""aura-signer as a real process: signing through `aura sign-bridges`, the persisted serial,
refusal of unauthorised local users (a throw-away system user), bad requests, sd_notify and
socket activation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from aura_common import ipc
from aura_common.ipc.frames import FROM_SIGNER, to_map
from aura_common.pki import ca
from aura_common.pki.manifest import SignedManifest, verify
from aura_lab import signer
from aura_lab.signer import PYTHON, SignerServer
from aura_lab.users import as_user

pytestmark = pytest.mark.e2e

server, running = signer.server, signer.running  # the fixtures


async def _ask(path: Path, frame: dict[str, Any]) -> dict[str, Any]:
    """Send `frame` as it is (malformed ones too) and return the reply as its map."""
    channel = await ipc.connect(path, "admin", FROM_SIGNER)
    try:
        channel.sock.send(msgpack.packb(frame, use_bin_type=True))
        return to_map(await asyncio.wait_for(channel.recv(), 10))
    finally:
        channel.close()


def ask(server: SignerServer, frame: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_ask(server.socket, frame))


def serial_of(server: SignerServer, reply: dict[str, Any]) -> int:
    signed = SignedManifest.from_mapping(reply["manifest"])
    return verify(signed, ca.load_ca_public_key(server.root), now=None).serial


def sign_request(**changes: Any) -> dict[str, Any]:
    return {
        "t": "sign", "endpoints": [{"host": "vpn.test", "tcp": 443}], "expires_days": 7,
        "server_public_key": bytes(32), **changes,
    }  # fmt: skip


# -- signing --------------------------------------------------------------------------------------
def test_root_signs_through_the_cli(running: SignerServer) -> None:
    out = running.root / "out.json"
    result = running.aura(
        "sign-bridges", "--endpoints", "vpn.test:tcp=443:udp=8443", "[2001:db8::1]:quic=8444",
        "--expires", "30", "-o", str(out),
    )  # fmt: skip
    assert "serial 1," in result.stdout
    assert "endpoint vpn.test:udp=8443:tcp=443" in result.stdout
    assert "router is not running" in result.stdout
    signed = SignedManifest.from_json(out.read_text())
    assert signed == running.manifest()
    ca_public = ca.load_ca_public_key(running.root)
    manifest = verify(signed, ca_public, now=None)
    assert manifest.bridges == ("vpn.test:8443", "vpn.test:443", "[2001:db8::1]:8444")
    assert (manifest.expires - manifest.issued).days == 30
    server_pub = (running.root / "server.pub").read_text().strip()
    assert manifest.server_public_key == base64.b64decode(server_pub)
    assert (running.state / "signer" / "manifest.serial").read_text() == "1\n"


def test_serial_persists_across_restarts_and_increases(server: SignerServer) -> None:
    serials = []
    for _ in range(2):
        server.start_signer()
        server.wait_for_socket()
        for _ in range(2):
            reply = ask(server, sign_request())
            assert reply["t"] == "signed", reply
            serials.append(serial_of(server, reply))
        server.stop_signer()
    assert serials == [1, 2, 3, 4]
    assert (server.state / "signer" / "manifest.serial").read_text() == "4\n"
    # A lost serial file does not send serials back: the stored manifest still counts.
    (server.state / "signer" / "manifest.serial").unlink()
    server.start_signer()
    server.wait_for_socket()
    assert serial_of(server, ask(server, sign_request())) == 5


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        ({"t": "status"}, "unexpected frame 'status'"),
        (sign_request(extra=1), "unknown field 'extra'"),
        (sign_request(endpoints=[]), "endpoints: expected 1..16"),
        (sign_request(endpoints=[{"host": "vpn.test", "udp": None}] * 17),
         "sign.endpoints: expected a list of at most 16 entries"),
        (sign_request(endpoints=[{"host": "vpn.test", "tcp": 0}]), "endpoints[0]: expected a "
                                                                   "valid HostPorts (tcp port"),
        (sign_request(endpoints=[{"host": "a b", "tcp": 1}]), "endpoints[0]"),
        (sign_request(expires_days=0), "expires_days"),
        (sign_request(expires_days="7"), "expires_days"),
        (sign_request(server_public_key="x" * 32), "server_public_key"),
        # A hostile value is not echoed whole.
        (sign_request(endpoints=[{"host": "h" * 60000, "tcp": 1}]), "h" * 150 + "...)")
    ],
)
def test_bad_requests_get_a_clear_error(
    running: SignerServer, frame: dict[str, Any], complaint: str
) -> None:
    reply = ask(running, frame)
    assert reply["t"] == "error"
    assert complaint in reply["message"]
    assert not (running.state / "signer" / "manifest.json").exists()
    # The signer is still serving.
    assert ask(running, sign_request())["t"] == "signed"


def test_garbage_frame_does_not_hurt_the_signer(running: SignerServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(10)
        sock.connect(str(running.socket))
        sock.send(b"\xc1\xc1garbage")
        assert msgpack.unpackb(sock.recv(4096))["t"] == "error"
    assert ask(running, sign_request())["t"] == "signed"


def test_cli_says_how_to_start_a_missing_signer(server: SignerServer) -> None:
    result = server.aura("sign-bridges", "--endpoints", "vpn.test:tcp=443", check=False)
    assert result.returncode == 1
    assert "signer is not running" in result.stderr
    assert "systemctl start aura-signer" in result.stderr


# -- who may connect -------------------------------------------------------------------------------
@pytest.fixture
def stranger() -> Iterator[pwd.struct_passwd]:
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd")
    name = f"aura-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def connect_as(user: pwd.struct_passwd, path: Path) -> dict[str, Any]:
    """Connect as `user` and say hello; what happened, as a mapping."""

    def hello() -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                # A caller with no role here is turned away as it connects: the answer waits
                # even when the hello came too late to be sent.
                with contextlib.suppress(BrokenPipeError):
                    sock.send(msgpack.packb({"t": "hello", "v": 1, "role": "admin"}))
                reply = sock.recv(4096)
                return {"reply": msgpack.unpackb(reply) if reply else None}
        except OSError as error:
            return {"errno": error.errno}

    return as_user(user, hello)


def test_unauthorised_local_user_is_refused(
    running: SignerServer, stranger: pwd.struct_passwd
) -> None:
    # Lines of defence: the directories (0750), the socket file (0660, the admin group), and
    # the signer's SO_PEERCRED check. Open each in turn.
    assert connect_as(stranger, running.socket) == {"errno": 13}
    os.chmod(running.root, 0o755)
    os.chmod(running.run_dir, 0o755)
    assert connect_as(stranger, running.socket) == {"errno": 13}
    os.chmod(running.socket, 0o666)
    outcome = connect_as(stranger, running.socket)
    # The uid may take no role here, so it is turned away as it is accepted, unread.
    message = "permission denied: this account may not connect here"
    assert outcome == {"reply": {"t": "error", "message": message}}
    assert f"(uid {stranger.pw_uid}, gid {stranger.pw_gid}): {message}" in running.log.read_text()
    assert not (running.state / "signer" / "manifest.json").exists()
    assert ask(running, sign_request())["t"] == "signed"


# -- systemd integration ---------------------------------------------------------------------
def test_ready_notification_after_binding(server: SignerServer) -> None:
    notify_path = server.root / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(20)
        server.start_signer(env={**os.environ, "NOTIFY_SOCKET": str(notify_path)})
        message = notify.recv(4096).decode()
    assert "READY=1" in message.split("\n")
    assert server.socket.exists()
    assert ask(server, sign_request())["t"] == "signed"


def test_socket_activation(server: SignerServer) -> None:
    server.run_dir.mkdir(exist_ok=True)
    path = server.run_dir / "activated.sock"
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listening.bind(str(path))
    listening.listen(8)
    fd = listening.fileno()
    try:
        server.start_signer(
            argv=["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh", PYTHON, "-m", "services.signer",
                  "--config", str(server.config)],
            env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "signer"},
            pass_fds=(3,), preexec_fn=lambda: os.dup2(fd, 3),
        )  # fmt: skip
        server.wait_for_log("signing bridge manifests on socket activation")
        reply = asyncio.run(_ask(path, sign_request()))
    finally:
        listening.close()
    assert reply["t"] == "signed"
    assert not server.socket.exists()  # it used the passed socket, not its own path
