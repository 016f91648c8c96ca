"""QUIC and TLS-over-TCP end to end: fallback when UDP is blocked, probes against the TCP port,
a transport killed mid-session, and a busy configured port.

Topology from aura_lab/topology.py; nftables in the client's namespace plays the censor.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    AuraServer,
    assert_traffic,
    block,
    build,
    client_config,
    client_status,
    wait_transport,
)
from aura_lab.topology import client_is_up as is_up

pytestmark = pytest.mark.e2e

SERVER = "198.51.100.1"
DECOY_PORT = 9443


def start_tls_decoy(lab: Lab, server: AuraServer) -> None:
    """A decoy HTTPS site behind the TCP port's fallback: openssl's built-in status page."""
    key, cert = server.folder / "decoy.key", server.folder / "decoy.crt"
    lab.run(server.ns, ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=decoy.example",
                        "-days", "2", "-keyout", str(key), "-out", str(cert)])
    lab.spawn(server.ns, ["openssl", "s_server", "-accept", f"127.0.0.1:{DECOY_PORT}",
                          "-cert", str(cert), "-key", str(key), "-www", "-quiet"],
              log=server.folder / "decoy.log")
    lab.wait_for(lambda: lab.run(server.ns, ["ss", "-Htln", f"sport = :{DECOY_PORT}"]
                                 ).stdout.strip() != "", what="decoy listening")


def start_client(lab: Lab, server: AuraServer, tmp_path: Path, ns: str) -> tuple[Path, Path]:
    config = client_config(server, tmp_path, keepalive=3)
    log = tmp_path / "client.log"
    lab.spawn(ns, [*AURA, "client", "up", "--foreground", str(config)], log=log)
    return config, log


def tls_probe(lab: Lab, ns: str, port: int, alpn: str = "http/1.1") -> str:
    """`openssl s_client` with another ALPN, asking for / once connected."""
    result = lab.run(ns, ["sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 10 "
                          f"openssl s_client -connect {SERVER}:{port} -alpn {alpn} -ign_eof"],
                     check=False)
    return result.stdout + result.stderr


PROBES = r"""
import os, socket, sys, time
server, port, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(20):  # random bytes
    with socket.create_connection((server, port), timeout=5) as s:
        s.sendall(os.urandom(3000))
stalled = socket.create_connection((server, port), timeout=5)
stalled.sendall(bytes.fromhex("160301020001") + os.urandom(30))  # half a ClientHello
held = []
for _ in range(idle):
    try:
        held.append(socket.create_connection((server, port), timeout=5))
    except OSError:
        pass
time.sleep(6)
print("opened", len(held))
"""


def test_udp_blocked_quic_then_transport_killed_moves_to_tcp(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"))
    server.start()
    ns = server.add_client_namespace()
    block(lab, ns, tmp_path, "udp dport 8443")  # the WireGuard port only; QUIC gets through
    config, log = start_client(lab, server, tmp_path, ns)
    wait_transport(lab, ns, config, "quic")
    assert "udp" in log.read_text()  # it tried UDP first
    assert_traffic(lab, ns, server)

    os.kill(server.service_pid("quic"), signal.SIGKILL)
    lab.wait_for(lambda: "quic" in broken_lines(log), timeout=20, what="broken QUIC path logged")
    assert "WARNING" in broken_lines(log)
    lab.wait_for(lambda: is_up(lab, ns, config), timeout=60, what="client back up")
    assert client_status(lab, ns, config)["transport"] in ("tcp", "quic")
    assert lab.ping(ns, INTERNET_HOST)


def broken_lines(log: Path) -> str:
    return "\n".join(line for line in log.read_text().splitlines()
                     if "path broke" in line or "failed" in line)


def test_all_udp_blocked_tcp_carries_traffic_and_shrugs_off_probes(
    lab: Lab, tmp_path: Path
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"), edit={
        "transports.tcp.fallback": [{"type": "proxy", "upstream": f"127.0.0.1:{DECOY_PORT}"}],
        "transports.tcp.max_pending": 64,
    })
    start_tls_decoy(lab, server)
    server.start()
    ns = server.add_client_namespace()
    block(lab, ns, tmp_path, "meta l4proto udp")
    config, _ = start_client(lab, server, tmp_path, ns)
    wait_transport(lab, ns, config, "tcp")
    assert_traffic(lab, ns, server)

    # A probe with another ALPN meets the decoy site, its certificate and its answer.
    answer = tls_probe(lab, ns, 8443)
    assert "decoy.example" in answer and "HTTP/1.0 200 ok" in answer
    curl = lab.run(ns, ["curl", "-sk", "--http1.1", "--max-time", "10",
                        f"https://{SERVER}:8443/"], check=False)
    assert curl.returncode == 0 and "s_server" in curl.stdout

    # Random bytes, a stalled handshake and hundreds of idle connections (more than
    # max_pending): the connected client keeps working throughout.
    probes = lab.spawn(ns, [sys.executable, "-c", PROBES, SERVER, "8443", "300"],
                       log=tmp_path / "probes.log")
    time.sleep(2)
    assert lab.ping(ns, INTERNET_HOST, count=5)
    assert probes.wait(60) == 0
    assert "opened" in (tmp_path / "probes.log").read_text()
    assert is_up(lab, ns, config)
    assert lab.ping(ns, INTERNET_HOST)


def test_busy_port_is_skipped_and_reject_closes_probes(lab: Lab, tmp_path: Path) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp"))
    squatter = lab.spawn(server.ns, [sys.executable, "-c",
                                     "import socket,time; s=socket.socket(socket.AF_INET6);"
                                     "s.bind(('::', 8443)); s.listen(); time.sleep(600)"])
    lab.wait_for(lambda: lab.run(server.ns, ["ss", "-Htln", "sport = :8443"]).stdout.strip()
                 != "", what="port 8443/tcp taken")
    server.start()
    tcp = json.loads((tmp_path / "state" / "transports" / "tcp" / "runtime.json").read_text())
    assert tcp["bound"][0].endswith(":8444")
    assert "8444" in server.log.read_text()

    answer = tls_probe(lab, server.add_client_namespace(), 8444)
    assert "no peer certificate available" in answer or "Cipher is (NONE)" in answer

    # A client provisioned now learns the port the transport really took.
    ns = server.add_client_namespace()
    block(lab, ns, tmp_path, "meta l4proto udp")
    config, _ = start_client(lab, server, tmp_path, ns)
    wait_transport(lab, ns, config, "tcp")
    assert client_status(lab, ns, config)["endpoint"].endswith(":8444")
    assert lab.ping(ns, INTERNET_HOST)
    lab.stop(squatter)
