"""Prometheus metrics: every metric name, the collectors, and the HTTP listener that serves them.

The services keep the counters they need anyway (the router's session table, the transports'
hub, carriers and IPC channels); the collectors here read that state when Prometheus scrapes,
so the data path pays nothing per packet for metrics. The one addition to the data path is
`TransportCounters`: handshakes, handshake messages sent and drops by reason, which the
WireGuard core reports only as events.

Labels come from bounded sets only: `peer` from the registry (names the operator chose),
`transport` and `link` from the service roles, `reason` from the fixed tables below. Nothing a
remote sends becomes a label.

The listener runs on the service's own event loop (no thread reads state the loop is
changing); a scrape blocks the loop for as long as collection takes, a few milliseconds.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from aura_common.config import ServerConfig, format_host_port
from aura_common.roles import Transport
from aura_common.state.timestamps import parse_time

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger(__name__)

REQUEST_LIMIT = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds to send the request and to take the answer
MAX_CLIENTS = 4  # concurrent scrapes; more are closed at once

# Drop reasons of the WireGuard core, by the words that identify them, in the order checked.
# Anything else (malformed messages, whose text carries sizes a sender chooses) is
# "malformed", so the label set stays fixed whatever arrives.
DROP_REASONS: tuple[tuple[str, str], ...] = (
    ("rate limit", "rate_limited"),
    ("cookie was sent there", "cookie_already_sent"),
    ("queue full", "handshake_queue_full"),
    ("backlog full", "handshake_queue_full"),
    ("mac1", "bad_mac1"),
    ("cookie reply", "bad_cookie_reply"),
    ("replayed initiation", "replayed_handshake"),
    ("initiation flood", "replayed_handshake"),
    ("handshake rejected", "bad_handshake"),
    ("no pending initiation", "unexpected_response"),
    ("did not complete", "handshake_timeout"),
    ("did not answer", "handshake_timeout"),
    ("handshake answer", "bad_handshake"),
    ("did not authenticate", "bad_data"),
    ("replayed data", "replayed_data"),
    ("unknown receiver index", "unknown_session"),
    ("session expired", "expired_session"),
    ("peer was removed", "unknown_session"),
    ("no endpoint", "no_endpoint"),
    ("malformed", "malformed_packet"),
)
OTHER_DROP = "malformed"
_REASON_CACHE_LIMIT = 64
STARTED = time.time()  # this module is imported as the service starts

MESSAGE_KINDS = {1: "initiation", 2: "response", 3: "cookie_reply"}


def drop_reason(reason: str) -> str:
    """The `reason` label for a drop the WireGuard core reported in words."""
    for words, label in DROP_REASONS:
        if words in reason:
            return label
    return OTHER_DROP


class TransportCounters:
    """What a transport counts from the core's events: the rest is read at scrape time."""

    __slots__ = ("_labels", "dropped", "handshakes", "sent")

    def __init__(self) -> None:
        self.handshakes = 0
        self.sent: Counter[int] = Counter()  # handshake messages by type byte (1, 2, 3)
        self.dropped: Counter[str] = Counter()  # by drop_reason() label
        self._labels: dict[str, str] = {}

    def drop(self, reason: str) -> None:
        label = self._labels.get(reason)
        if label is None:
            label = drop_reason(reason)
            if len(self._labels) < _REASON_CACHE_LIMIT:
                self._labels[reason] = label
        self.dropped[label] += 1

    def shed(self, count: int) -> None:
        """Handshake messages a carrier dropped unread: the handshake queue's overflow."""
        self.dropped["handshake_queue_full"] += count


# -- what the collectors read -------------------------------------------------------------
class Link(Protocol):
    """An IPC channel (aura_common.ipc.Channel)."""

    sock: socket.socket
    dropped: int
    delay_dropped: int

    @property
    def queued(self) -> int: ...


class Hub(Protocol):
    """A transport's session hub (aura_common.transport.hub.SessionHub)."""

    role: str
    counters: TransportCounters

    @property
    def carrier(self) -> object: ...

    @property
    def session_count(self) -> int: ...

    @property
    def router_link(self) -> Link | None: ...


def send_queue_bytes(sock: socket.socket) -> int:
    """Bytes written to a socket and not yet taken by the other side (SIOCOUTQ)."""
    value = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, value)
    except (OSError, ValueError):
        return 0
    return value[0]


_F = TypeVar("_F", CounterMetricFamily, GaugeMetricFamily)


class _Families:
    """Metric families built during one collection, by name."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def counter(self, name: str, help_text: str, labels: Iterable[str]) -> CounterMetricFamily:
        return self._family(CounterMetricFamily, name, help_text, labels)

    def gauge(self, name: str, help_text: str, labels: Iterable[str]) -> GaugeMetricFamily:
        return self._family(GaugeMetricFamily, name, help_text, labels)

    def _family(self, kind: type[_F], name: str, help_text: str, labels: Iterable[str]) -> _F:
        family = self.families.get(name)
        if family is None:
            family = self.families[name] = kind(name, help_text, labels=list(labels))
        assert isinstance(family, kind)
        return family

    def __iter__(self) -> Iterator[Metric]:
        return iter(self.families.values())


def _add_link(out: _Families, link_name: str, channel: Link | None) -> None:
    queued = out.gauge("aura_ipc_queued_frames",
                       "Frames received on an IPC link and not yet handled.", ["link"])
    unsent = out.gauge("aura_ipc_send_queue_bytes",
                       "Bytes sent on an IPC link that the other side has not read yet.",
                       ["link"])
    dropped = out.counter("aura_ipc_dropped_batches",
                          "Packet batches dropped because the IPC link's socket was full "
                          "(since the link was made).", ["link"])
    delayed = out.counter("aura_ipc_delay_dropped_packets",
                          "Packets CoDel dropped because frames kept waiting on an IPC link "
                          "over 5 ms (since the link was made).", ["link"])
    if channel is None:
        return
    delayed.add_metric([link_name], channel.delay_dropped)
    queued.add_metric([link_name], channel.queued)
    unsent.add_metric([link_name], send_queue_bytes(channel.sock))
    dropped.add_metric([link_name], channel.dropped)


class TransportCollector(Collector):
    """A transport's sessions, handshakes, drops, connections and router link."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub, out = self.hub, _Families()
        role, counters = hub.role, hub.counters
        out.gauge("aura_transport_sessions", "Peers with a live WireGuard session.",
                  ["transport"]).add_metric([role], hub.session_count)
        out.counter("aura_transport_handshakes", "Completed WireGuard handshakes.",
                    ["transport"]).add_metric([role], counters.handshakes)
        sent = out.counter("aura_transport_handshake_messages_sent",
                           "WireGuard handshake messages sent, by type (responses answer "
                           "initiations; cookie replies answer them under load).",
                           ["transport", "type"])
        for kind, name in MESSAGE_KINDS.items():
            sent.add_metric([role, name], counters.sent[kind])
        dropped = out.counter("aura_transport_dropped_messages",
                              "Messages dropped, by reason.", ["transport", "reason"])
        for reason, count in sorted(counters.dropped.items()):
            dropped.add_metric([role, reason], count)
        carrier: Any = hub.carrier
        if hasattr(carrier, "dropped"):  # TCP: write buffer full; QUIC: datagram queue full
            dropped.add_metric([role, "send_queue_full"], carrier.dropped)
        if hasattr(carrier, "connections"):
            out.gauge("aura_transport_connections", "Open TLS or QUIC connections.",
                      ["transport"]).add_metric([role], carrier.connections)
        if hasattr(carrier, "pending"):
            out.gauge("aura_transport_pending_connections",
                      "Connections not yet past the TLS and WireGuard handshakes.",
                      ["transport"]).add_metric([role], carrier.pending)
        fallback = getattr(carrier, "fallback", None)
        if fallback is not None:
            out.gauge("aura_fallback_active_flows",
                      "Non-Aura TCP flows being handled by the fallback chain.",
                      []).add_metric([], fallback.active)
            flows = out.counter("aura_fallback_flows",
                                "Non-Aura TCP flows, by outcome: the handler type that "
                                "claimed them, unclaimed, overflow (too many in flight) "
                                "or failed.", ["outcome"])
            for outcome, count in sorted(fallback.outcomes.items()):
                flows.add_metric([outcome], count)
        _add_link(out, "router", hub.router_link)
        yield from out


class RouterCollector(Collector):
    """Per peer traffic and sessions, transports and drops, from the router's own tables.

    `snapshot` copies the numbers (on the loop: a few attribute reads per peer); building the
    families from the copy, the larger part of the work, may happen in another thread.
    """

    def __init__(self, router: Any) -> None:
        self.router = router  # services.router.main.Router (importing it here would cycle)

    def collect(self) -> Iterable[Metric]:
        return self.snapshot().collect()

    def snapshot(self) -> _Snapshot:
        router = self.router
        sessions, usage, refused = router.sessions, router.usage, router.gate.refused
        peers = []
        for peer in router.registry:
            if not peer.enabled:
                continue
            name = peer.name
            session = sessions.get(name)
            live = None if session is None else (
                session.transport, session.rx_bytes, session.rx_packets, session.tx_bytes,
                session.tx_packets, session.handshake_at)
            peers.append((name, usage.get(name), peer.limited, name in refused,
                          peer.quota_bytes, peer.expires, live))
        per_transport = Counter(session.transport for session in sessions)
        links = {role: channel for channel, role in router.transports.items()}
        out = _Families()
        up = out.gauge("aura_router_transport_connected",
                       "1 while the transport is connected to the router.", ["transport"])
        live_sessions = out.gauge("aura_router_sessions",
                                  "Sessions the router routes, by transport.", ["transport"])
        for role in Transport:
            up.add_metric([role], 1 if role in links else 0)
            live_sessions.add_metric([role], per_transport[role])
            _add_link(out, role, links.get(role))
        dropped = out.counter("aura_router_dropped_packets",
                              "IP packets the router dropped: no session owns the destination "
                              "(unroutable), the source is not the peer's (spoofed), or they "
                              "waited too long in the queue read from the TUN (queue).",
                              ["reason"])
        dropped.add_metric(["unroutable"], sessions.unroutable)
        dropped.add_metric(["spoofed"], sessions.spoofed)
        dropped.add_metric(["queue"], router.queue.dropped)
        out.counter("aura_router_ecn_marked_packets",
                    "IP packets from the TUN marked Congestion Experienced instead of dropped "
                    "(their sender is ECN-capable).", []).add_metric([], router.queue.marked)
        handshakes = out.counter("aura_router_handshakes",
                                 "Initiations the transports forwarded: answered, refused (did "
                                 "not authenticate, replayed, peer may not connect) or dropped "
                                 "(over a transport's queue).", ["outcome"])
        handshakes.add_metric(["answered"], router.handshakes_answered)
        handshakes.add_metric(["refused"], router.handshakes_refused)
        handshakes.add_metric(["dropped"], router.handshakes_dropped)
        drops = None if router.tun is None else tun_queue_drops(router.tun.name)
        if drops is not None:
            out.counter("aura_router_tun_dropped_packets",
                        "Packets the kernel dropped because the TUN device's queue (packets "
                        "waiting for the router to read them) was full: the device's "
                        "tx_dropped, as `ip -s link` shows it.", []).add_metric([], drops)
        return _Snapshot(lambda: _peer_families(peers, out))


def tun_queue_drops(device: str) -> int | None:
    """The kernel's count of packets dropped at `device`'s full queue, None if unknown."""
    try:
        with open(f"/sys/class/net/{device}/statistics/tx_dropped", "rb") as counter:
            return int(counter.read())
    except (OSError, ValueError):
        return None


def _peer_families(peers: list[tuple[Any, ...]], out: _Families) -> Iterator[Metric]:
    connected = out.gauge("aura_peer_connected",
                          "1 while the peer has a session on some transport.", ["peer"])
    info = InfoMetricFamily("aura_peer_transport", "The transport of a peer's session.",
                            labels=["peer"])
    rx_bytes = out.counter("aura_peer_receive_bytes",
                           "Bytes of IP packets from the peer, since its session began.",
                           ["peer"])
    rx_packets = out.counter("aura_peer_receive_packets",
                             "IP packets from the peer, since its session began.", ["peer"])
    tx_bytes = out.counter("aura_peer_transmit_bytes",
                           "Bytes of IP packets to the peer, since its session began.",
                           ["peer"])
    tx_packets = out.counter("aura_peer_transmit_packets",
                             "IP packets to the peer, since its session began.", ["peer"])
    handshake = out.gauge("aura_peer_last_handshake_timestamp_seconds",
                          "When the peer's latest handshake completed (Unix time).", ["peer"])
    usage = out.counter("aura_peer_usage_bytes",
                        "Bytes the peer moved through the tunnel, both ways, kept across "
                        "restarts (what its quota counts).", ["peer"])
    quota = out.gauge("aura_peer_quota_bytes", "The peer's traffic quota.", ["peer"])
    expiry = out.gauge("aura_peer_expiry_timestamp_seconds",
                       "When the peer's access ends (Unix time).", ["peer"])
    refused = out.gauge("aura_peer_refused",
                        "1 while the peer is refused for its expiry or quota.", ["peer"])
    for name, used, limited, is_refused, quota_bytes, expires, live in peers:
        label = [name]
        usage.add_metric(label, used)
        if limited:
            refused.add_metric(label, 1 if is_refused else 0)
        if quota_bytes is not None:
            quota.add_metric(label, quota_bytes)
        if expires is not None:
            with contextlib.suppress(ValueError):
                expiry.add_metric(label, parse_time(expires).timestamp())
        connected.add_metric(label, 0 if live is None else 1)
        if live is None:
            continue
        transport, rx_b, rx_p, tx_b, tx_p, handshake_at = live
        info.add_metric(label, {"transport": transport})
        rx_bytes.add_metric(label, rx_b)
        rx_packets.add_metric(label, rx_p)
        tx_bytes.add_metric(label, tx_b)
        tx_packets.add_metric(label, tx_p)
        if handshake_at:
            handshake.add_metric(label, handshake_at)
    out.gauge("aura_registry_peers", "Enabled peers in the registry.",
              []).add_metric([], len(peers))
    yield from out
    yield info


class _Snapshot(Collector):
    """State already read from a service: `collect` only builds metric families from it."""

    def __init__(self, build: Callable[[], Iterable[Metric]]) -> None:
        self.build = build

    def collect(self) -> Iterable[Metric]:
        return self.build()


def snapshot(collector: Collector) -> Collector:
    """What `collector` reports now, to be written out later, maybe in another thread."""
    take = getattr(collector, "snapshot", None)
    if take is not None:
        taken: Collector = take()
        return taken
    families = list(collector.collect())
    return _Snapshot(lambda: families)


class ProcessCollector(Collector):
    """When the process started, its CPU time and memory: what tells restarts and leaks.

    prometheus_client's own process collector needs /proc/stat, which the units hide
    (ProcSubset=pid); these read only the process's own entries.
    """

    def __init__(self) -> None:
        self.started = STARTED

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("process_start_time_seconds",
                                "When the process started (Unix time).", value=self.started)
        times = os.times()
        yield CounterMetricFamily("process_cpu_seconds",
                                  "User and system CPU time the process used.",
                                  value=times.user + times.system)
        try:
            with open("/proc/self/statm", "rb") as statm:
                resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size.",
                                value=resident)


# -- HTTP ---------------------------------------------------------------------------------
class Exporter:
    """Serves `GET /metrics` of some collectors on the running event loop."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)
        self.server: asyncio.Server | None = None
        self._clients = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, limit=REQUEST_LIMIT,
                                                 reuse_address=True)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.transport.abort()
            return
        self._clients += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await self._answer(head.split(b"\r\n", 1)[0]))
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            self._clients -= 1
            writer.transport.abort()

    async def _answer(self, request_line: bytes) -> bytes:
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return _response(b"400 Bad Request", b"text/plain", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
        if target != b"/metrics":
            return _response(b"404 Not Found", b"text/plain", b"see /metrics\n")
        # The services' state is read here, on the loop; the families and the text (most of a
        # scrape's time) are made in a thread, so the loop keeps moving packets between turns
        # of the GIL.
        registry = CollectorRegistry(auto_describe=False)
        for collector in self.collectors:
            registry.register(snapshot(collector))
        body = await asyncio.to_thread(generate_latest, registry)
        return _response(b"200 OK", CONTENT_TYPE_LATEST.encode(),
                         b"" if method == b"HEAD" else body, len(body))


def _response(status: bytes, content_type: bytes, body: bytes, length: int | None = None
              ) -> bytes:
    return b"".join((
        b"HTTP/1.1 ", status, b"\r\nContent-Type: ", content_type,
        b"\r\nContent-Length: ", str(len(body) if length is None else length).encode(),
        b"\r\nConnection: close\r\n\r\n", body,
    ))


async def serve(config: ServerConfig, service: str, collector: Collector) -> Exporter | None:
    """Start serving the service's metrics where the config says; None when switched off.

    A listener that cannot bind costs the metrics, not the service: one error line, and the
    service carries on.
    """
    address = config.metrics.address(service)
    if address is None:
        return None
    exporter = Exporter([ProcessCollector(), collector])
    where = format_host_port(*address)
    try:
        await exporter.start(*address)
    except OSError as error:
        log.error("%s: metrics.%s: cannot listen on %s (%s); no metrics from aura-%s",
                  config.path, service, where, error.strerror or error, service)
        return None
    log.info("metrics on http://%s/metrics", where)
    return exporter
