"""Metrics end to end: a real Prometheus server scrapes a running suite with a client on it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import (
    INTERNET_HOST,
    PUBLIC_HOST,
    AuraServer,
    build,
    stock_wireguard_up,
)

pytestmark = pytest.mark.e2e

SERVICES = {"router": 9740, "udp": 9741, "tcp": 9742, "quic": 9743}
PROMETHEUS = "127.0.0.1:9090"
FLOOD = 300  # handshake initiations in one burst: past the core's "under load" backlog (128)
MAC2_FLOOD = 20  # then initiations with a valid cookie: 5 pass the per-source limit

# One burst of FLOOD initiations (valid mac1, a key the server does not know) that aura-udp
# reads at once: it is stopped while they arrive. It sheds what is past one read's share, which
# puts it under load: the first initiation without mac2 gets a cookie reply and the rest from
# that endpoint are dropped (one reply per endpoint per 4 s). Then, from a second port, one
# initiation gets a cookie reply of its own, is taken, and MAC2_FLOOD initiations carrying it
# follow, again read at once while the server is still under load. Prints how many cookie
# replies each port received.
FLOOD_SCRIPT = """
import base64, os, signal, socket, sys, time
from aura_common.wireguard import Device, generate_private_key
key, host, port = base64.b64decode(sys.argv[1]), sys.argv[2], int(sys.argv[3])
burst, mac2_burst, pid = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

def read_cookies(sock, device):
    sock.settimeout(0.2)
    cookies, deadline = 0, time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            reply = sock.recv(2048)
        except TimeoutError:
            if cookies:
                break
            continue
        cookies += reply[0] == 3
        device.receive([reply], (host, port), time.monotonic())
    return cookies

def read_at_once(sock, datagrams):
    os.kill(pid, signal.SIGSTOP)
    try:
        for datagram in datagrams:
            sock.send(datagram)
    finally:
        os.kill(pid, signal.SIGCONT)

counts = []
for n in (burst, 1):
    device = Device(generate_private_key())
    peer = device.add_peer(key, endpoint=(host, port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    # One initiation sent n times: one cookie reply per message, its replays are paced.
    read_at_once(sock, [device.initiate(peer, time.monotonic())[0].datagrams[0]] * n)
    counts.append(read_cookies(sock, device))
read_at_once(sock, [device.initiate(peer, time.monotonic())[0].datagrams[0]
                    for _ in range(mac2_burst)])
print(*counts)
"""


class Prometheus:
    """Debian's Prometheus in the server's namespace, scraping every service each second."""

    def __init__(self, lab: Lab, ns: str, folder: Path) -> None:
        self.lab, self.ns = lab, ns
        folder.mkdir()
        config = folder / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for name, port in SERVICES.items()
            ],
        }))
        self.process = lab.spawn(ns, [
            "prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={PROMETHEUS}", "--log.level=warn",
        ], log=folder / "prometheus.log")
        lab.wait_for(self._ready, timeout=30, what="prometheus ready")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("prometheus exited")
        result = self.lab.run(self.ns, ["curl", "-sf", f"http://{PROMETHEUS}/-/ready"],
                              check=False)
        return result.returncode == 0

    def query(self, expression: str) -> list[dict[str, Any]]:
        result = self.lab.run(self.ns, [
            "curl", "-sf", "--get", "--data-urlencode", f"query={expression}",
            f"http://{PROMETHEUS}/api/v1/query"])
        answer = json.loads(result.stdout)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expression: str) -> float | None:
        """The single value of an instant query; None when it has no series."""
        series = self.query(expression)
        assert len(series) <= 1, series
        return float(series[0]["value"][1]) if series else None

    def wait_until(self, expression: str, test: Any, what: str, timeout: float = 30) -> float:
        """Wait until the query's value passes `test`; return that value."""
        seen: list[float | None] = []

        def check() -> bool:
            seen.append(self.value(expression))
            return seen[-1] is not None and bool(test(seen[-1]))

        try:
            self.lab.wait_for(check, timeout=timeout, interval=0.5, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}; last value of {expression}: {seen[-1:]}") from None
        assert seen[-1] is not None
        return seen[-1]

    def stop(self) -> None:
        self.lab.stop(self.process)


@pytest.fixture
def prometheus_available() -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("needs Debian's prometheus package (./run installs it)")


def server_public_key(conf: Path) -> str:
    for line in conf.read_text().splitlines():
        if line.replace(" ", "").startswith("PublicKey="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"no PublicKey in {conf}")


def listening_ports(lab: Lab, ns: str) -> set[int]:
    out = lab.run(ns, ["ss", "-Hltn"]).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_prometheus_sees_traffic_sessions_handshake_drops_and_fallback(
    lab: Lab, tmp_path: Path, prometheus_available: None
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"))
    server.start()
    conf = server.provision("alice", "wireguard")
    client = server.add_client_namespace()
    stock_wireguard_up(lab, client, conf)
    assert lab.ping(client, INTERNET_HOST)
    prometheus = Prometheus(lab, server.ns, tmp_path / "prometheus")

    for job in SERVICES:
        prometheus.wait_until(f'up{{job="{job}"}}', lambda v: v == 1, f"{job} scraped")
    assert prometheus.value('aura_transport_sessions{transport="udp"}') == 1
    assert prometheus.value('aura_peer_connected{peer="alice"}') == 1
    assert prometheus.value('aura_peer_transport_info{peer="alice",transport="udp"}') == 1
    assert prometheus.value('aura_router_transport_connected{transport="tcp"}') == 1
    assert prometheus.value('process_start_time_seconds{job="udp"}') is not None
    for transport in ("tcp", "quic"):  # read from the carriers themselves
        assert prometheus.value(f'aura_transport_connections{{transport="{transport}"}}') == 0
    assert prometheus.value('aura_ipc_dropped_batches_total{job="router",link="udp"}') == 0

    # Traffic: 300 pings of 1000 bytes each way grow alice's counters by at least that.
    sent = 'aura_peer_receive_bytes_total{peer="alice"}'
    received = 'aura_peer_transmit_bytes_total{peer="alice"}'
    before_rx, before_tx = prometheus.value(sent) or 0, prometheus.value(received) or 0
    lab.run(client, ["ping", "-c", "300", "-i", "0.002", "-s", "1000", "-q", INTERNET_HOST])
    prometheus.wait_until(sent, lambda v: v >= before_rx + 300 * 1028, "upload counted")
    prometheus.wait_until(received, lambda v: v >= before_tx + 300 * 1028, "download counted")
    prometheus.wait_until('aura_peer_usage_bytes_total{peer="alice"}',
                          lambda v: v >= 2 * 300 * 1028, "usage counted")
    assert (prometheus.value('aura_transport_handshakes_total{transport="udp"}') or 0) >= 1
    assert (prometheus.value('aura_transport_handshake_messages_sent_total'
                             '{transport="udp",type="response"}') or 0) >= 1

    # A bounded flood from one address: under load each message gets one cookie reply (its
    # replays are dropped as answered just now); with the cookie, the per-source rate limit
    # passes its burst of 5 and drops the rest.
    port = int(conf.read_text().split(f"Endpoint = {PUBLIC_HOST}:")[1].split()[0])
    flood = lab.run(client, [sys.executable, "-c", FLOOD_SCRIPT, server_public_key(conf),
                             PUBLIC_HOST, str(port), str(FLOOD), str(MAC2_FLOOD),
                             str(server.service_pid("udp"))],
                    env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert flood.stdout.split() == ["1", "1"], "one cookie reply per message under load"
    prometheus.wait_until('aura_transport_handshake_messages_sent_total'
                          '{transport="udp",type="cookie_reply"}', lambda v: v == 2,
                          "cookie replies counted")
    prometheus.wait_until('aura_transport_dropped_messages_total'
                          '{transport="udp",reason="cookie_already_sent"}', lambda v: v >= 1,
                          "initiations after the cookie reply counted")
    limited = prometheus.wait_until(
        'aura_transport_dropped_messages_total{transport="udp",reason="rate_limited"}',
        lambda v: v >= 1, "rate-limited initiations counted")
    assert limited <= MAC2_FLOOD - 5  # those a read keeps past the burst; it sheds the rest
    prometheus.wait_until('aura_router_handshakes_total{outcome="refused"}', lambda v: v >= 1,
                          "the unknown key's initiations refused by the router")

    # A plain HTTP request to the TLS port goes to the fallback chain (reject by default).
    lab.run(client, ["curl", "-s", "-m", "5", f"http://{PUBLIC_HOST}:{server_tcp_port(server)}/"],
            check=False)
    prometheus.wait_until('aura_fallback_flows_total{outcome="reject"}', lambda v: v >= 1,
                          "fallback flow counted")
    prometheus.stop()


def server_tcp_port(server: AuraServer) -> int:
    return int(yaml.safe_load(server.config.read_text())["transports"]["tcp"]["port"])


def test_metrics_can_be_switched_off_per_service_and_entirely(
    lab: Lab, tmp_path: Path, prometheus_available: None
) -> None:
    server = build(lab, tmp_path)
    server.init(transports=("udp", "tcp", "quic"), edit={"metrics.udp": None})
    server.start()
    prometheus = Prometheus(lab, server.ns, tmp_path / "prometheus")
    prometheus.wait_until('up{job="router"}', lambda v: v == 1, "router scraped")
    prometheus.wait_until('up{job="quic"}', lambda v: v == 1, "quic scraped")
    prometheus.wait_until('up{job="udp"}', lambda v: v == 0, "udp scrape failed")
    assert SERVICES["udp"] not in listening_ports(lab, server.ns)

    server.stop()
    document = yaml.safe_load(server.config.read_text())
    document["metrics"]["enabled"] = False
    server.config.write_text(yaml.safe_dump(document))
    server.start()
    assert not set(SERVICES.values()) & listening_ports(lab, server.ns)
    for job in SERVICES:
        prometheus.wait_until(f'up{{job="{job}"}}', lambda v: v == 0, f"{job} scrape failed")
    prometheus.stop()



def test_the_tun_queues_kernel_drops_are_counted(lab: Lab, tmp_path: Path) -> None:
    """The router stopped while 3,000 datagrams for the pool (2,048 fit the TUN's queue) are
    sent into aura0: the kernel drops the rest, and the router's metric says how many, as
    the device's own counter does."""
    server = build(lab, tmp_path)
    server.init()
    server.start()
    router = server.service_pid("router")
    os.kill(router, signal.SIGSTOP)
    try:  # bounded: 3,000 one-byte datagrams, once
        lab.run(server.ns, [sys.executable, "-c", TO_THE_POOL])
    finally:
        os.kill(router, signal.SIGCONT)
    kernel = int(lab.run(server.ns, ["cat", "/sys/class/net/aura0/statistics/tx_dropped"])
                 .stdout)
    assert kernel > 0, "the queue did not overflow"
    scraped = lab.run(server.ns, ["curl", "-sf", f"http://127.0.0.1:{SERVICES['router']}/metrics"])
    values = [line.split()[-1] for line in scraped.stdout.splitlines()
              if line.startswith("aura_router_tun_dropped_packets_total ")]
    assert values and float(values[0]) == kernel, scraped.stdout[-2000:]


TO_THE_POOL = """
import socket
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3000):
    sock.sendto(b"x", ("10.77.0.50", 9))
"""
