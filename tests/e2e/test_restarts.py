"""Restarts under `aura server run`: the router and a transport come back without the other."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    SERVER_TUNNEL_V4,
    aura_client_up,
    build,
    stock_wireguard_up,
)

pytestmark = pytest.mark.e2e


def recovers(lab: Lab, ns: str, within: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if lab.ping(ns, SERVER_TUNNEL_V4, count=1, timeout=1):
            return time.monotonic() - started
    raise AssertionError(f"no traffic within {within}s")


def test_router_restart_keeps_sessions_and_transport_restart_rehandshakes(
    lab: Lab, tmp_path: Path
) -> None:
    server = build(lab, tmp_path)
    server.init()
    server.start()
    ns = server.add_client_namespace()
    stock_wireguard_up(lab, ns, server.provision("alice", "wireguard"))
    assert lab.ping(ns, SERVER_TUNNEL_V4)
    handshake = server.status()["peers"][0]["last_handshake"]

    os.kill(server.service_pid("router"), signal.SIGKILL)
    pause = recovers(lab, ns, within=20)
    alice = server.status()["peers"][0]
    assert alice["connected"], "the transport re-registered alice with the new router"
    # Same session: the transport re-registered it; the client did not need a new handshake.
    assert abs(alice["last_handshake"] - handshake) < 2, (alice, handshake)

    udp_pid = server.service_pid("udp")
    os.kill(udp_pid, signal.SIGKILL)
    rehandshake = recovers(lab, ns, within=40)
    assert server.service_pid("udp") != udp_pid
    assert server.status()["peers"][0]["last_handshake"] > handshake
    print(f"router restart pause {pause:.1f}s, transport restart pause {rehandshake:.1f}s")


def test_a_closed_tls_connection_ends_its_session_at_once(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("tcp",))
    server.start()
    ns, config = aura_client_up(lab, server, "alice", tmp_path / "client.log", timeout=60)
    alice = server.status()["peers"][0]
    assert alice["connected"] and alice["transport"] == "tcp"

    lab.run(ns, [*AURA, "client", "down", str(config)])
    lab.wait_for(lambda: not server.status()["peers"][0]["connected"], timeout=5,
                 what="the router to see alice gone with her connection")
