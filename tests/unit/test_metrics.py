"""Metrics: labels from fixed sets, collectors reading the services' state, the HTTP listener."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from aura_common import ipc
from aura_common.config import MetricsConfig, ServerConfig
from aura_common.errors import ConfigError
from aura_common.ipc.frames import TO_ROUTER, Packets, PeerKey, encode
from aura_common.service import metrics
from aura_common.state.client_limits import Gate, Usage
from aura_common.state.registry import RegisteredPeer
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import Device, Transmit, generate_private_key, public_key
from services.router.sessions import SessionTable
from tests.unit.router_fakes import ipv4

LABELS = {label for _, label in metrics.DROP_REASONS} | {metrics.OTHER_DROP}
CLIENT = ("198.51.100.2", 40000)


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# -- drop reasons -----------------------------------------------------------------------------
@pytest.mark.parametrize(("reason", "label"), [
    ("handshake rate limit", "rate_limited"),
    ("no mac2, and a cookie was sent there just now", "cookie_already_sent"),
    ("bad mac1", "bad_mac1"),
    ("data did not authenticate", "bad_data"),
    ("cookie reply did not authenticate", "bad_cookie_reply"),
    ("replayed initiation", "replayed_handshake"),
    ("handshake rejected: unknown peer", "bad_handshake"),
    ("unknown receiver index", "unknown_session"),
    ("initiation of 147 bytes, expected 148", "malformed"),
])
def test_drop_reasons_map_to_their_labels(reason: str, label: str) -> None:
    assert metrics.drop_reason(reason) == label


@given(st.text(max_size=200))
def test_any_reason_text_gets_a_label_from_the_fixed_set(reason: str) -> None:
    assert metrics.drop_reason(reason) in LABELS


def test_reasons_carrying_sender_chosen_sizes_do_not_grow_the_counters() -> None:
    counters = metrics.TransportCounters()
    for size in range(1000):
        counters.drop(f"initiation of {size} bytes, expected 148")
    assert counters.dropped == {"malformed": 1000}
    assert len(counters._labels) <= metrics._REASON_CACHE_LIMIT


# -- a transport: a real hub and WireGuard device, fed by a real client device ----------------
class RecordingCarrier:
    def __init__(self) -> None:
        self.sent: list[Transmit] = []

    def transmit(self, destination: tuple[str, int], datagrams: Sequence[bytes]) -> None:
        self.sent.append(Transmit(destination, list(datagrams)))


def hub_with_client() -> tuple[SessionHub, Device, RecordingCarrier]:
    server_key, client_key = generate_private_key(), generate_private_key()
    hub = SessionHub("udp", Device(server_key), "/nonexistent/router.sock")
    carrier = RecordingCarrier()
    hub.carrier = carrier
    hub._apply_peers([PeerKey("alice", public_key(client_key), b"")])
    client = Device(client_key)
    client.add_peer(public_key(server_key), endpoint=("203.0.113.1", 8443))
    return hub, client, carrier


def handshake(hub: SessionHub, client: Device, carrier: RecordingCarrier, now: float) -> None:
    peer = next(iter(client.peers))
    (initiation,) = client.initiate(peer, now)
    assert isinstance(initiation, Transmit)
    hub.received(initiation.datagrams, CLIENT)
    response = carrier.sent.pop()
    events = client.receive(response.datagrams, ("203.0.113.1", 8443), now)
    keepalive = [e for e in events if isinstance(e, Transmit)]
    hub.received(keepalive[0].datagrams, CLIENT)


def test_transport_metrics_count_handshakes_sessions_and_drops() -> None:
    hub, client, carrier = hub_with_client()
    registry = registry_of(metrics.TransportCollector(hub))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"transport": "udp", **labels})

    assert value("aura_transport_sessions") == 0
    handshake(hub, client, carrier, 1.0)
    assert value("aura_transport_sessions") == 1
    assert value("aura_transport_handshakes_total") == 1
    assert value("aura_transport_handshake_messages_sent_total", type="response") == 1
    assert value("aura_transport_handshake_messages_sent_total", type="cookie_reply") == 0

    # Stale initiations from the client's address: the core drops them; the metric names why.
    peer = next(iter(client.peers))
    for attempt in range(10):
        initiation = client.initiate(peer, 2.0)[0]
        assert isinstance(initiation, Transmit)
        hub.received(initiation.datagrams * 3, (CLIENT[0], 40001 + attempt))
    assert (value("aura_transport_dropped_messages_total", reason="replayed_handshake") or 0) > 0
    hub.received([b"\x07" * 40], CLIENT)
    assert value("aura_transport_dropped_messages_total", reason="malformed") == 1
    assert registry.get_sample_value("aura_ipc_dropped_batches_total", {"link": "router"}) is None


def test_cookie_replies_are_counted_under_load() -> None:
    hub, client, _ = hub_with_client()
    # Under load from a backlog of one handshake message: every initiation needs a cookie.
    static = hub.device._static
    assert static is not None
    hub.device = Device(static.private_bytes_raw(), under_load_after=1)
    hub._names.clear()
    hub._by_name.clear()
    hub._apply_peers([PeerKey("alice", client.public_key, b"")])
    registry = registry_of(metrics.TransportCollector(hub))
    peer = next(iter(client.peers))
    for attempt in range(3):
        initiation = client.initiate(peer, 1.0 + attempt / 10)[0]
        assert isinstance(initiation, Transmit)
        hub.received(initiation.datagrams, (CLIENT[0], CLIENT[1] + attempt))  # one reply each
    assert registry.get_sample_value("aura_transport_handshake_messages_sent_total",
                                     {"transport": "udp", "type": "cookie_reply"}) == 3


def test_carrier_and_fallback_state_is_read_at_scrape_time() -> None:
    hub, _, _ = hub_with_client()
    hub.carrier = SimpleNamespace(dropped=4, connections=2, pending=1,
                                  fallback=SimpleNamespace(active=1,
                                                           outcomes=Counter(proxy=3, overflow=1)))
    registry = registry_of(metrics.TransportCollector(hub))
    assert registry.get_sample_value("aura_transport_connections", {"transport": "udp"}) == 2
    assert registry.get_sample_value("aura_transport_dropped_messages_total",
                                     {"transport": "udp", "reason": "send_queue_full"}) == 4
    assert registry.get_sample_value("aura_fallback_flows_total", {"outcome": "proxy"}) == 3
    hub.carrier.fallback.outcomes["proxy"] += 1
    assert registry.get_sample_value("aura_fallback_flows_total", {"outcome": "proxy"}) == 4


# -- the router ------------------------------------------------------------------------------
def router_state() -> SimpleNamespace:
    sessions: SessionTable[str] = SessionTable()
    registry = [RegisteredPeer("alice", b"a" * 32, address_v4="10.77.0.2"),
                RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3", quota_bytes=1000,
                             expires="2030-01-01T00:00:00Z"),
                RegisteredPeer("carol", b"c" * 32, address_v4="10.77.0.4", enabled=False)]
    return SimpleNamespace(registry=registry, sessions=sessions, transports={},
                           usage=Usage("/nonexistent/usage.json", {"alice": 5, "bob": 2000}),
                           gate=Gate(), handshakes_answered=7, handshakes_refused=2,
                           handshakes_dropped=1, tun=None,
                           queue=SimpleNamespace(dropped=5, marked=6))


def test_the_tun_devices_kernel_drops_are_the_routers_metric() -> None:
    router = router_state()
    router.tun = SimpleNamespace(name="lo")  # a device every namespace has, read for real
    kernel = int(Path("/sys/class/net/lo/statistics/tx_dropped").read_text())
    value = registry_of(metrics.RouterCollector(router)).get_sample_value(
        "aura_router_tun_dropped_packets_total")
    assert value is not None and kernel <= value <= kernel + 1000
    router.tun = SimpleNamespace(name="aura-gone")  # no such device: no series, no error
    assert registry_of(metrics.RouterCollector(router)).get_sample_value(
        "aura_router_tun_dropped_packets_total") is None


def test_router_metrics_follow_the_session_table() -> None:
    router = router_state()
    registry = registry_of(metrics.RouterCollector(router))
    sessions = router.sessions
    sessions.up("alice", "link", "quic", "192.0.2.1:5000", ["10.77.0.2"], 1700000000.0)
    sessions.accept("alice", "link", [ipv4("10.77.0.2", "1.1.1.1")] * 3)
    sessions.dispatch([ipv4("1.1.1.1", "10.77.0.2", b"z" * 80), ipv4("1.1.1.1", "10.77.0.9")])
    alice = {"peer": "alice"}
    assert registry.get_sample_value("aura_peer_connected", alice) == 1
    assert registry.get_sample_value("aura_peer_connected", {"peer": "bob"}) == 0
    assert registry.get_sample_value("aura_peer_connected", {"peer": "carol"}) is None
    assert registry.get_sample_value("aura_peer_receive_packets_total", alice) == 3
    assert registry.get_sample_value("aura_peer_receive_bytes_total", alice) == 3 * 40
    assert registry.get_sample_value("aura_peer_transmit_bytes_total", alice) == 100
    assert registry.get_sample_value("aura_peer_transmit_bytes_total", {"peer": "bob"}) is None
    assert registry.get_sample_value("aura_peer_last_handshake_timestamp_seconds",
                                     alice) == 1700000000.0
    assert registry.get_sample_value("aura_peer_transport_info",
                                     {"peer": "alice", "transport": "quic"}) == 1
    assert registry.get_sample_value("aura_router_sessions", {"transport": "quic"}) == 1
    assert registry.get_sample_value("aura_router_dropped_packets_total",
                                     {"reason": "unroutable"}) == 1
    assert registry.get_sample_value("aura_router_dropped_packets_total",
                                     {"reason": "queue"}) == 5
    assert registry.get_sample_value("aura_router_ecn_marked_packets_total") == 6
    assert registry.get_sample_value("aura_registry_peers") == 2
    assert [registry.get_sample_value("aura_router_handshakes_total", {"outcome": outcome})
            for outcome in ("answered", "refused", "dropped")] == [7, 2, 1]


def test_router_metrics_show_usage_and_limits() -> None:
    router = router_state()
    registry = registry_of(metrics.RouterCollector(router))
    bob = {"peer": "bob"}
    assert registry.get_sample_value("aura_peer_usage_bytes_total", {"peer": "alice"}) == 5
    assert registry.get_sample_value("aura_peer_quota_bytes", bob) == 1000
    assert registry.get_sample_value("aura_peer_quota_bytes", {"peer": "alice"}) is None
    assert registry.get_sample_value("aura_peer_expiry_timestamp_seconds", bob) == 1893456000
    assert registry.get_sample_value("aura_peer_refused", bob) == 0
    router.gate.review([p for p in router.registry if p.limited], router.usage, 1.7e9)
    assert registry.get_sample_value("aura_peer_refused", bob) == 1
    router.usage.add("bob", 10)
    assert registry.get_sample_value("aura_peer_usage_bytes_total", bob) == 2010


# -- config ----------------------------------------------------------------------------------
def config(metrics_section: object) -> ServerConfig:
    return ServerConfig.from_mapping(
        {"version": 1, "public_host": "vpn.example.com", "metrics": metrics_section},
        "/etc/aura/server.yaml")


def test_metrics_default_to_one_localhost_port_per_service_and_can_be_switched_off() -> None:
    defaults = config({})
    assert [defaults.metrics.address(s) for s in ("router", "udp", "tcp", "quic")] == [
        ("127.0.0.1", 9740), ("127.0.0.1", 9741), ("127.0.0.1", 9742), ("127.0.0.1", 9743)]
    assert config({"enabled": False}).metrics.address("router") is None
    one_off = config({"udp": None, "router": "[::1]:9100"}).metrics
    assert one_off.address("udp") is None
    assert one_off.address("router") == ("::1", 9100)
    assert ServerConfig.from_mapping(yaml.safe_load(defaults.dump())) == defaults


@pytest.mark.parametrize(("section", "message"), [
    ({"udp": "localhost:9741"},
     "/etc/aura/server.yaml: metrics.udp: expected IP:PORT such as 127.0.0.1:9741"),
    ({"tcp": "127.0.0.1:9740"},
     "/etc/aura/server.yaml: metrics.tcp: expected an address other than that of metrics.router"),
    ({"enabled": "yes"}, "/etc/aura/server.yaml: metrics.enabled: expected true or false"),
    ({"signer": "127.0.0.1:1"}, "/etc/aura/server.yaml: metrics.signer: expected one of"),
])
def test_metrics_config_errors_name_file_key_and_expectation(section: object,
                                                             message: str) -> None:
    with pytest.raises(ConfigError) as error:
        config(section)
    assert str(error.value).startswith(message)


# -- the HTTP listener -----------------------------------------------------------------------
async def request(address: tuple[str, int], data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:  # closed with a reset: no answer
        return b""
    finally:
        writer.close()


def test_exporter_serves_metrics_and_nothing_else() -> None:
    async def main() -> None:
        hub, _, _ = hub_with_client()
        any_port = replace(config({}), metrics=MetricsConfig(udp=("127.0.0.1", 0)))
        exporter = await metrics.serve(any_port, "udp", metrics.TransportCollector(hub))
        assert exporter is not None
        address = exporter.address
        try:
            ok = await request(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b'aura_transport_sessions{transport="udp"} 0.0' in ok
            assert b"process_start_time_seconds" in ok
            assert (await request(address, b"GET / HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 404")
            assert (await request(address, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(
                b"HTTP/1.1 405")
            assert (await request(address, b"junk\r\n\r\n")).startswith(b"HTTP/1.1 400")
            # A request line and headers beyond the limit get no answer, just a close.
            assert await request(address, b"GET /" + b"a" * metrics.REQUEST_LIMIT) == b""
        finally:
            exporter.close()

    asyncio.run(main())


def test_exporter_bounds_concurrent_and_slow_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 0.3)

    async def main() -> None:
        exporter = metrics.Exporter([])
        await exporter.start("127.0.0.1", 0)
        try:
            idle = [await asyncio.open_connection(*exporter.address)
                    for _ in range(metrics.MAX_CLIENTS)]
            await asyncio.sleep(0.05)
            assert await request(exporter.address, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
            for reader, _ in idle:  # the silent ones are closed after the timeout
                assert await asyncio.wait_for(reader.read(), 2) == b""
            ok = await request(exporter.address, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK")
        finally:
            exporter.close()

    asyncio.run(main())


def test_a_taken_port_costs_the_metrics_not_the_service(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with caplog.at_level(logging.ERROR):
                exporter = await metrics.serve(config({"tcp": f"127.0.0.1:{port}"}), "tcp",
                                               metrics.TransportCollector(hub_with_client()[0]))
        assert exporter is None
        assert f"metrics.tcp: cannot listen on 127.0.0.1:{port}" in caplog.text

    asyncio.run(main())


# -- the Grafana dashboard -------------------------------------------------------------------
def test_the_dashboard_asks_only_for_metrics_the_services_export() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"]
               for target in panel.get("targets", [])]
    queries += [variable["definition"] for variable in dashboard["templating"]["list"]]
    asked = {name for query in queries for name in re.findall(r"\b(?:aura|process)_\w+", query)}

    async def exported() -> set[str]:
        tcp_hub, _, _ = hub_with_client()
        tcp_hub.carrier = SimpleNamespace(
            dropped=0, connections=0, pending=0,
            fallback=SimpleNamespace(active=0, outcomes=Counter(x=1)))
        router = router_state()
        router.sessions.up("bob", "link", "udp", "192.0.2.1:5000", ["10.77.0.3"], 1.0)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            router.transports = {ipc.Channel(a, TO_ROUTER, "udp"): "udp"}
            registry = CollectorRegistry(auto_describe=False)
            for collector in (metrics.RouterCollector(router),
                              metrics.TransportCollector(tcp_hub), metrics.ProcessCollector()):
                registry.register(collector)
            return {sample.name for family in registry.collect() for sample in family.samples}

    names = asyncio.run(exported())
    assert asked and asked <= names, asked - names


def test_ipc_link_metrics_show_queues_and_drops() -> None:
    async def main() -> None:
        router = router_state()
        registry = registry_of(metrics.RouterCollector(router))
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            channel = ipc.Channel(a, TO_ROUTER, "udp")
            router.transports = {channel: "udp"}
            b.setblocking(False)
            for _ in range(3):
                b.send(encode(Packets(0.0, [("alice", [b"x"])])))
            await asyncio.sleep(0.05)  # the channel reads them into its queue
            udp = {"link": "udp"}
            assert registry.get_sample_value("aura_ipc_queued_frames", udp) == 3
            assert registry.get_sample_value("aura_ipc_send_queue_bytes", udp) == 0
            while channel.send_packets([("alice", [b"y" * 1000] * 50)]):
                pass  # until the other side's buffer is full and a batch is dropped
            assert (registry.get_sample_value("aura_ipc_send_queue_bytes", udp) or 0) > 50_000
            assert (registry.get_sample_value("aura_ipc_dropped_batches_total", udp) or 0) >= 1
            assert registry.get_sample_value("aura_router_transport_connected",
                                             {"transport": "udp"}) == 1
            channel.close()

    asyncio.run(main())
