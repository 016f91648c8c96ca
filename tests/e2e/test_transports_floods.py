"""Hostile clients against aura-tcp and aura-quic, end to end: hundreds of connections that
dribble a ClientHello in 1-byte records, stall half-way, never finish TLS, or finish QUIC's
handshake and never WireGuard's, from one source port and from many addresses. A connected
Aura client keeps its traffic flowing throughout, a new one connects in the middle of it, and
the transport process is never replaced.

Topology from aura_lab/topology.py; the attacker namespace from aura_lab/flood.py (its
addresses in 10.200.0.0/16 serve as many sources). Floods: aura_lab/stream_flood.py, each
bounded in connections, rate and time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from aura_lab.flood import SERVER_V4, attacker_namespace
from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    AuraServer,
    build,
    client_config,
    iperf3,
    wait_transport,
)

pytestmark = pytest.mark.e2e

FLOOD_SECONDS = 30


def pinned_client(lab: Lab, server: AuraServer, tmp_path: Path, name: str, transport: str
                  ) -> tuple[str, Path]:
    ns = server.add_client_namespace()
    config = client_config(server, tmp_path, name)
    document = yaml.safe_load(config.read_text())
    document["transports"]["order"] = [transport]
    config.write_text(yaml.safe_dump(document))
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)],
              log=tmp_path / f"{name}.log")
    return ns, config


def flood(lab: Lab, attacker: str, tmp_path: Path, kind: str, port: int, *args: str
          ) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / f"flood-{kind}.json"
    process = lab.spawn(attacker, [
        sys.executable, "-m", "aura_lab.stream_flood", kind, "--target", f"{SERVER_V4}:{port}",
        "--seconds", str(FLOOD_SECONDS), *args], log=log)
    return process, log


def report(process: subprocess.Popen[bytes], log: Path) -> dict[str, float]:
    assert process.wait(FLOOD_SECONDS + 60) == 0, log.read_text()
    return json.loads(log.read_text().strip().splitlines()[-1])


def keeps_working_under(lab: Lab, server: AuraServer, tmp_path: Path, transport: str,
                        floods: list[tuple[subprocess.Popen[bytes], Path]],
                        ns: str) -> None:
    """The connected client's traffic flows, and a new client connects, while `floods` run."""
    pid = server.service_pid(transport)
    assert lab.ping(ns, INTERNET_HOST, count=5)
    newcomer, newcomer_config = pinned_client(lab, server, tmp_path, "bob", transport)
    wait_transport(lab, newcomer, newcomer_config, transport, timeout=40)
    assert lab.ping(newcomer, INTERNET_HOST, count=3)
    throughput = iperf3(lab, ns, server.internet_ns, INTERNET_HOST, seconds=2)
    assert throughput > 1e6, throughput
    assert all(process.poll() is None for process, _ in floods), "the floods ran throughout"
    assert server.service_pid(transport) == pid


def test_tcp_floods_leave_clients_working(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("tcp",))
    server.start()
    attacker = attacker_namespace(lab, server)
    ns, config = pinned_client(lab, server, tmp_path, "alice", "tcp")
    wait_transport(lab, ns, config, "tcp", timeout=40)

    # Fewer than max_pending in all, so that without the per-address bound nothing is evicted
    # and each dribbled ClientHello (16,000 bytes in 1-byte records, 800 a second) runs until
    # the server decides: re-parsing all of it on every read stalled aura-tcp for good.
    floods = [
        flood(lab, attacker, tmp_path, "tcp-dribble", 8443, "--connections", "40",
              "--sources", "10", "--rate", "40", "--interval", "0.01", "--hello-size", "16000",
              "--records-per-write", "8"),
        flood(lab, attacker, tmp_path, "tcp-stall", 8443, "--connections", "150",
              "--rate", "40"),
        flood(lab, attacker, tmp_path, "tcp-no-finish", 8443, "--connections", "60",
              "--sources", "30", "--rate", "40"),
    ]
    keeps_working_under(lab, server, tmp_path, "tcp", floods, ns)
    dribble, stall, no_finish = (report(*f) for f in floods)
    for name, result in (("dribble", dribble), ("stall", stall), ("no-finish", no_finish)):
        assert result["opened"] >= 40, (name, result)
        assert result["closed_by_server"] > 0, (name, result)
    log = server.log.read_text()
    assert "connections pending from this address; closing the oldest" in log
    assert lab.ping(ns, INTERNET_HOST)


def test_quic_floods_leave_clients_working(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("quic",), edit={"transports.quic.max_connections": 128})
    server.start()
    attacker = attacker_namespace(lab, server)
    ns, config = pinned_client(lab, server, tmp_path, "alice", "quic")
    wait_transport(lab, ns, config, "quic", timeout=40)

    floods = [
        flood(lab, attacker, tmp_path, "quic-one-port", 8444, "--connections", "200",
              "--rate", "30"),
        flood(lab, attacker, tmp_path, "quic-many-ports", 8444, "--connections", "200",
              "--sources", "20", "--rate", "30"),
    ]
    keeps_working_under(lab, server, tmp_path, "quic", floods, ns)
    one_port, many = (report(*f) for f in floods)
    # One port: only max_pending_per_source of its connections ever finish a handshake at once.
    assert one_port["opened"] >= 200 and one_port["handshakes"] < one_port["opened"] / 2
    assert many["handshakes"] > 16, many
    assert one_port["closed_by_server"] + many["closed_by_server"] > 0
    log = server.log.read_text()
    assert "QUIC connections from this address without a WireGuard handshake" in log
    assert "128 QUIC connections open; closing the oldest without a WireGuard handshake" in log
    assert lab.ping(ns, INTERNET_HOST)
