"""What a compromised local process or a broken disk can cost a running server: nothing more.

A process (root, so it may claim the udp role) sends oversized and malformed frames to the
router's socket: the router logs a warning, drops that connection, and keeps serving a
connected stock WireGuard client. A state directory that is full or read-only (a small tmpfs
mounted over it in the server's own mount namespace) leaves the services running; each
failed write is one line at error priority naming the file, and nothing written before is
lost.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import msgpack
import pytest

from aura_common.state import runtime
from aura_lab.netns import Lab
from aura_lab.topology import AURA, SERVER_TUNNEL_V4, AuraServer, build, stock_wireguard_up

pytestmark = pytest.mark.e2e

SO_SNDBUFFORCE = 32


def frame(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


HOSTILE = {
    "oversized": b"\x82\xa1t\xa4pkts" + b"\0" * (2 << 20),
    "undecodable": b"\xc1",
    "expanding": frame({"t": "pkts", "at": 0, "batches": [{}] * 4000}),
    "deep": b"\x82\xa1t\xa4pkts\xa7batches" + b"\x91" * 5000 + b"\x90",
    "wrong shape": frame({"t": "pkts", "at": 0, "batches": [["alice", "x"]]}),
    "bad part": frame({"t": "session_up", "peer": [], "chunk": "peer", "end": "no"}),
    "bad handshake time": frame({"t": "session_up", "peer": "alice", "endpoint": "x",
                                 "handshake_at": "now"}),
}
WARNINGS = {
    "oversized": "sent a frame over",
    "undecodable": "sent a bad frame",
    "expanding": "sent a bad frame",
    "deep": "sent a bad frame",
    "wrong shape": "sent a bad frame: pkts.batches[0]: expected a [peer, [bytes, ...]] pair",
    "bad part": "frame, which is not sent in parts",
    "bad handshake time": "sent a bad frame: session_up.handshake_at: expected a finite number",
}


def hostile_transport(path: Path, payload: bytes) -> list[str]:
    """Say hello as the udp transport, send `payload`, and return the frame types the router
    sent back until it closed the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(10)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 8 << 20)
    sock.connect(str(path))
    sock.send(frame({"t": "hello", "v": 1, "role": "udp"}))
    kinds = [msgpack.unpackb(sock.recv(4 << 20))["t"]]  # accepted: the router's hello
    sock.send(payload)
    while data := sock.recv(4 << 20):
        kinds.append(msgpack.unpackb(data)["t"])
    sock.close()
    return kinds


@pytest.fixture
def server_with_alice(lab: Lab, tmp_path: Path) -> tuple[AuraServer, str]:
    server = build(lab, tmp_path)
    server.init()
    conf = server.provision("alice", "wireguard")
    server.start()
    ns = server.add_client_namespace()
    stock_wireguard_up(lab, ns, conf)
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    return server, ns


def test_hostile_frames_cost_only_their_own_connection(
    lab: Lab, server_with_alice: tuple[AuraServer, str]
) -> None:
    server, ns = server_with_alice
    socket_path = server.folder / "run" / "router.sock"
    for name, payload in HOSTILE.items():
        kinds = hostile_transport(socket_path, payload)
        assert kinds[0] == "hello" and kinds[-1] == "error", (name, kinds)
        assert server.process is not None and server.process.poll() is None, name
        def warned(name: str = name) -> bool:
            return re.search(rf"^aura-router WARNING .*{re.escape(WARNINGS[name])}",
                             server.log.read_text(), re.M) is not None

        lab.wait_for(warned, timeout=5, what=f"the router's warning about the {name} frame")
        assert lab.ping(ns, SERVER_TUNNEL_V4, count=2), f"alice cut off by the {name} frame"
    alice = next(p for p in server.status()["peers"] if p["name"] == "alice")
    assert alice["connected"] and alice["transport"] == "udp"
    assert "Traceback" not in server.log.read_text()


# -- a full or read-only state directory --------------------------------------------------
def start_on_small_state_dir(server: AuraServer, how: str) -> None:
    """`aura server run` in its own mount namespace, its state directory a 1 MiB tmpfs
    holding a copy of what was there, then filled up or made read-only."""
    state = server.folder / "state"
    saved = server.folder / "state.saved"
    fill = (f"dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null || true" if how == "full"
            else f"mount -o remount,ro {state}")
    script = "; ".join([
        f"set -e; cp -a {state} {saved}",
        f"mount -t tmpfs -o size=1m aura-state {state}",
        f"cp -a {saved}/. {state}/",
        fill,
        "exec " + shlex.join([*AURA, "--verbose", "--config", str(server.config),
                              "server", "run"]),
    ])
    server.process = server.lab.spawn(
        server.ns, ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        log=server.log,
    )
    server.lab.wait_for(server._transports_ready, timeout=30, what="server transports up")


def in_server_mounts(server: AuraServer, *argv: str) -> bytes:
    assert server.process is not None
    return subprocess.run(["nsenter", "-t", str(server.process.pid), "-m", *argv],
                          check=True, capture_output=True, timeout=30).stdout


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_services_keep_running_on_a_full_or_read_only_state_directory(
    lab: Lab, tmp_path: Path, how: str
) -> None:
    server = build(lab, tmp_path)
    server.init()
    conf = server.provision("alice", "wireguard")
    state = server.folder / "state"
    # What an earlier run wrote: it must survive every failed write.
    runtime.record_bound(state / "transports", "udp", ["[::]:1"], activated=False)
    written = {name: (state / name).read_bytes()
               for name in ("router/peers.json", "transports/udp/runtime.json")}
    start_on_small_state_dir(server, how)
    ns = server.add_client_namespace()
    stock_wireguard_up(lab, ns, conf)
    assert lab.ping(ns, SERVER_TUNNEL_V4), "serving despite the state directory"
    reason = os.strerror(28 if how == "full" else 30)  # ENOSPC / EROFS
    log = server.log.read_text()
    failed = [line for line in log.splitlines() if "runtime.json" in line and reason in line]
    assert failed and all(re.match(r"aura-udp ERROR ", line) for line in failed), log[-3000:]
    assert "Traceback" not in log
    for name, content in written.items():
        assert in_server_mounts(server, "cat", str(state / name)) == content, name
    assert not in_server_mounts(server, "find", str(state), "-name", ".*.tmp").strip()
    assert server.process is not None and server.process.poll() is None
    server.stop()
    assert "Traceback" not in server.log.read_text()
