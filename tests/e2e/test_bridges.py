"""Bridge manifests end to end: ports move, the operator signs, clients follow by themselves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from aura_common.state import runtime
from aura_lab.netns import Lab
from aura_lab.topology import (
    INTERNET_HOST,
    aura_client_up,
    build,
    client_is_up,
    client_status,
)

pytestmark = pytest.mark.e2e

HOLD_UDP_PORT = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    "s.bind(('::', 8443))\n"
    "print('bound', flush=True)\n"
    "time.sleep(600)\n"
)


def on_transport(lab: Lab, ns: str, config: Path, transport: str) -> bool:
    return (client_is_up(lab, ns, config)
            and client_status(lab, ns, config)["transport"] == transport)


def test_moved_ports_reach_connected_clients_through_a_signed_manifest(
    lab: Lab, tmp_path: Path
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"))
    server.start()
    ns, config = aura_client_up(lab, server, "alice", tmp_path / "client.log", timeout=30)
    assert client_status(lab, ns, config)["transport"] == "udp"

    # While the server is down, another program takes UDP 8443: on restart the UDP transport
    # moves to 8444 and QUIC, which skips the UDP transport's port, to 8445.
    server.stop()
    blocker_log = tmp_path / "blocker.log"
    blocker = lab.spawn(server.ns, [sys.executable, "-c", HOLD_UDP_PORT], log=blocker_log)
    lab.wait_for(lambda: "bound" in blocker_log.read_text() or blocker.poll() is not None,
                 timeout=30, what="the blocker holding UDP 8443")
    assert blocker.poll() is None, blocker_log.read_text()
    server.start()
    bound = runtime.read_runtime(tmp_path / "state" / "transports")
    assert bound["udp"]["bound"][0].endswith(":8444")
    assert bound["quic"]["bound"][0].endswith(":8445")

    # The client's old ports lead nowhere over UDP; it falls back to TLS over TCP by itself.
    lab.wait_for(lambda: on_transport(lab, ns, config, "tcp"), timeout=120,
                 what="client back up over TCP")

    # The operator signs what the transports really bound; the router pushes it in-tunnel.
    signed = server.aura("sign-bridges", "--from-runtime")
    assert "8444" in signed.stdout + signed.stderr
    lab.wait_for(lambda: client_status(lab, ns, config)["manifest_serial"] >= 1, timeout=15,
                 what="manifest received through the tunnel")
    stored = json.loads((tmp_path / "alice.state.json").read_text())
    assert stored, "the client stored the manifest"
    assert yaml.safe_load(config.read_text())["transports"]["udp"] == 8443, "not re-provisioned"

    # The client probes the better transports from the manifest beside its TCP path and moves
    # back to UDP on the new port by itself; no reconnect needed.
    lab.wait_for(lambda: on_transport(lab, ns, config, "udp"), timeout=60,
                 what="client back on UDP by itself")
    assert client_status(lab, ns, config)["endpoint"].endswith(":8444")
    assert "moved from tcp to udp" in (tmp_path / "client.log").read_text()
    assert lab.ping(ns, INTERNET_HOST)
    alice = next(p for p in server.status()["peers"] if p["name"] == "alice")
    assert alice["transport"] == "udp", "the router follows the client to UDP"
    lab.stop(blocker)
