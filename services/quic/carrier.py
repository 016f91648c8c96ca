"""The QUIC carrier: qh3 with ALPN aura/1, one WireGuard message per DATAGRAM frame.

Each QUIC connection stands for one client. The hub knows it by a stable address, the remote
address the connection started from, so a client whose address changes (NAT rebinding, a new
network) keeps its WireGuard session: qh3 follows the migration and the hub never notices.

qh3 is driven through its sans-I/O API (`aura_common.quic.link`). The listener side admits
new connections (version negotiation, Retry, the connection bound); the data path routes each
packet by its destination connection id, read straight from the header.

Python pays per call, so the data path moves bursts: everything one socket read returns is fed
to qh3 first, then each connection's WireGuard messages go to the hub in one call, and each
connection that queued replies sends them with what is due (acknowledgements) in one
`transmit`. An authenticated connection's acknowledgements alone wait a little for a message
to carry them (`QuicLink.acknowledge`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

from qh3._hazmat import Buffer
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    StreamDataReceived,
)
from qh3.quic.packet import (
    SMALLEST_MAX_DATAGRAM_SIZE,
    QuicErrorCode,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from aura_common.addresses import Endpoint, unmapped
from aura_common.config import QuicConfig
from aura_common.errors import ConfigError
from aura_common.quic.datagram import Burst, DatagramSocket
from aura_common.quic.link import CONNECTION_ID_LENGTH, QuicLink, datagram_configuration
from aura_common.service.log import RateLimitedLog, fields
from aura_common.transport.hub import SessionHub, format_endpoint
from services.quic.retry import RetryTokens

log = logging.getLogger("aura-quic")

# What a client may send before a WireGuard handshake completes over its connection: the QUIC
# handshake and a few initiations take 5 to 10 KiB. It also bounds what qh3 buffers for such
# a connection (out-of-order CRYPTO data).
MAX_UNAUTHENTICATED_BYTES = 64 << 10
# New connections one source address may open a second, after a burst of
# `max_pending_per_source`: a proven address that closes its connections and opens new ones
# would otherwise cost a full QUIC handshake (about 1 ms) each, dozens a second.
NEW_CONNECTIONS_PER_SECOND = 4.0
# Source addresses whose rate is remembered (about 200 bytes each); the one seen longest ago
# is forgotten first and comes back with a full burst.
RATE_TABLE_SIZE = 4096


class SourceRate:
    """Token buckets of new connections per source address: `rate` a second, at most
    `burst` saved, `size` sources remembered."""

    def __init__(self, rate: float, burst: int, size: int = RATE_TABLE_SIZE) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: dict[str, tuple[float, float]] = {}  # host -> (tokens, when), oldest first

    def _tokens(self, host: str, now: float) -> float:
        tokens, when = self._buckets.get(host, (self.burst, now))
        return min(self.burst, tokens + (now - when) * self.rate)

    def allows(self, host: str, now: float) -> bool:
        return self._tokens(host, now) >= 1

    def take(self, host: str, now: float) -> None:
        tokens = self._tokens(host, now) - 1
        self._buckets.pop(host, None)
        self._buckets[host] = (tokens, now)
        if len(self._buckets) > self.size:
            del self._buckets[next(iter(self._buckets))]


def server_configuration(settings: QuicConfig, cert_file: str, key_file: str
                         ) -> QuicConfiguration:
    configuration = datagram_configuration(is_client=False, idle_timeout=settings.idle_timeout)
    # aura/1 has no streams: a client gets no flow-control credit to make us buffer stream data.
    configuration.max_data = configuration.max_stream_data = 0
    try:
        configuration.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise ConfigError(error.filename, "", "the TLS certificate and key "
                          "(`aura server init` creates them)") from None
    except (ValueError, OSError) as error:
        raise ConfigError(cert_file, "", f"a PEM certificate matching {key_file}",
                          str(error)) from None
    return configuration


def plain_address(addr: Any) -> Endpoint:
    return unmapped(addr[0]), addr[1]


def destination_cid(data: bytes) -> bytes:
    """The destination connection id of the first QUIC packet in `data`, or b"".

    Read straight from the header (RFC 9000 section 17): a short header carries ours, of
    CONNECTION_ID_LENGTH bytes, after the flags; a long header gives its length. Routing
    needs nothing more, and qh3 checks the whole header when it takes the packet.
    """
    if not data:
        return b""
    if not data[0] & 0x80:
        return data[1:1 + CONNECTION_ID_LENGTH]
    if len(data) < 6:
        return b""
    return data[6:6 + data[5]]


class ServerConnection:
    """One client's QUIC connection: its link, its stable address, the messages of a burst."""

    def __init__(self, quic: QuicConnection, carrier: QuicCarrier, address: Endpoint) -> None:
        self.link = QuicLink(quic, carrier.socket, carrier.handle_events)
        self.carrier = carrier
        self.address = address
        self.batch: list[bytes] = []
        self.cids: set[bytes] = {quic.host_cid}

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.address)


class _Unauthenticated:
    """A connection over which no WireGuard handshake has completed yet."""

    __slots__ = ("deadline", "host", "received")

    def __init__(self, host: str, deadline: asyncio.TimerHandle) -> None:
        self.host, self.deadline = host, deadline
        self.received = 0


class QuicCarrier:
    """qh3 connections on one UDP socket, bound to the session hub.

    Retry makes a client prove its address before it may hold a connection. Connections are
    counted one by one (a client may open many from one UDP port). A connection is
    unauthenticated until a WireGuard handshake with a known peer completes over it; it is
    closed if that takes longer than `handshake_timeout` or MAX_UNAUTHENTICATED_BYTES. Beyond
    `max_pending_per_source` unauthenticated connections from one IP address, or past
    NEW_CONNECTIONS_PER_SECOND new ones from it (after a burst of as many as that), a packet
    that would open another is dropped before qh3 spends anything on it; at `max_connections`
    the oldest unauthenticated connection is closed to admit a new one (refused only when all
    are authenticated).
    """

    def __init__(self, hub: SessionHub, sock: socket.socket, *,
                 configuration: QuicConfiguration, settings: QuicConfig) -> None:
        self.hub = hub
        hub.carrier = self
        hub.on_authenticated = self._authenticated
        self.configuration = configuration
        self.settings = settings
        self.unauthenticated: dict[ServerConnection, _Unauthenticated] = {}
        self._unauthenticated_by_host: dict[str, int] = {}
        self.socket = DatagramSocket(sock, self._burst)
        self.dropped = 0  # DATAGRAM frames not queued: queue full or message too large
        # The local address the datagram being handled was sent to.
        self.local_address: str | None = None
        # Connections with messages queued (or a close) in this burst (ordered set).
        self.touched: dict[ServerConnection, None] = {}
        self._by_cid: dict[bytes, ServerConnection] = {}
        self._by_link: dict[QuicLink, ServerConnection] = {}
        self._by_address: dict[Endpoint, ServerConnection] = {}
        self._retry = RetryTokens()
        self._rate = SourceRate(NEW_CONNECTIONS_PER_SECOND, settings.max_pending_per_source)
        self._receiving = False
        self._log = RateLimitedLog(log)

    @property
    def connections(self) -> int:
        return len(self._by_link)

    @property
    def pending(self) -> int:
        return len(self.unauthenticated)

    # -- data path ------------------------------------------------------------------------
    def _burst(self, burst: Burst) -> None:
        touched = self.touched
        received: dict[ServerConnection, None] = {}
        self._receiving = True
        try:
            for datagrams, source, local in burst:
                self.local_address = local
                # Each connection takes its share of the run in one call.
                shares: dict[ServerConnection, list[bytes]] = {}
                for data in datagrams:
                    connection = self._by_cid.get(destination_cid(data))
                    if connection is None:
                        connection = self._admit(data, source)
                        if connection is None:
                            continue
                    if connection in self.unauthenticated and not self._charge(connection,
                                                                               len(data)):
                        continue
                    share = shares.get(connection)
                    if share is None:
                        shares[connection] = [data]
                    else:
                        share.append(data)
                for connection, share in shares.items():
                    if connection.link in self._by_link:  # not closed to make room meanwhile
                        connection.link.local_address = local
                        connection.link.receive(share, source)
                        received[connection] = None
            for connection in list(received):
                self._take_events(connection)
        finally:
            self._receiving = False
        self.touched = {}
        for connection in touched:
            connection.link.transmit()
        for connection in received:
            if connection in touched:
                continue
            # The QUIC and WireGuard handshakes go at once: the client waits for each step.
            if connection in self.unauthenticated:
                connection.link.transmit()
            else:
                connection.link.acknowledge()

    def handle_events(self, link: QuicLink) -> None:
        """Events a timer produced (idle timeout, the end of closing)."""
        connection = self._by_link.get(link)
        if connection is not None:
            self._take_events(connection)

    def _take_events(self, connection: ServerConnection) -> None:
        batch = connection.batch
        for event in connection.link.events():
            if type(event) is DatagramFrameReceived:
                batch.append(event.data)
            elif isinstance(event, ConnectionIdIssued):
                connection.cids.add(event.connection_id)
                self._by_cid[event.connection_id] = connection
            elif isinstance(event, ConnectionIdRetired):
                connection.cids.discard(event.connection_id)
                self._by_cid.pop(event.connection_id, None)
            elif isinstance(event, HandshakeCompleted):
                log.debug("QUIC connection from %s", connection.endpoint,
                          extra=fields(transport="quic", endpoint=connection.endpoint))
            elif isinstance(event, StreamDataReceived):
                connection.link.quic.close(error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                                           reason_phrase="aura/1 carries DATAGRAM frames only")
                self.touched[connection] = None  # the close leaves with this burst
            elif isinstance(event, ConnectionTerminated):
                self._forget(connection, event)
        if batch:
            connection.batch = []
            self.hub.received(batch, connection.address)

    def transmit(self, destination: Endpoint, datagrams: Sequence[bytes]) -> None:
        connection = self._by_address.get(destination)
        if connection is None:
            return
        # While a burst is handled, the messages leave with its acknowledgements.
        self.dropped += connection.link.send(datagrams, now=not self._receiving)
        if self._receiving:
            self.touched[connection] = None

    # -- listener side --------------------------------------------------------------------
    def _admit(self, data: bytes, addr: Any) -> ServerConnection | None:
        """A packet no connection claims: answer version negotiation, demand Retry, or open a
        connection for a retried Initial. Anything else is dropped."""
        try:
            header = pull_quic_header(Buffer(data=data),
                                      host_cid_length=self.configuration.connection_id_length)
        except ValueError:
            return None
        # Only a datagram large enough to open a connection is answered (RFC 9000 sections
        # 5.2.2 and 14.1): a Version Negotiation packet echoes both connection ids, so a
        # short one from a forged source would be reflected larger than it came.
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            return None
        supported = self.configuration.supported_versions
        # A Version Negotiation packet (version 0) is never answered: two servers would
        # bounce them forever at an attacker's request.
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None and header.version not in supported):
            self._reply(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=supported), addr)
            return None
        if header.packet_type != QuicPacketType.INITIAL:
            return None
        refusal = self._refusal(plain_address(addr)[0])
        if refusal:
            endpoint = format_endpoint(plain_address(addr))
            self._log.log(addr[0], logging.INFO, "%s; refusing %s", refusal, endpoint,
                          extra=fields(transport="quic", endpoint=endpoint))
            return None
        if not header.token:
            self._send_retry(header, addr)
            return None
        return self._open(header, addr)

    def _send_retry(self, header: QuicHeader, addr: Any) -> None:
        source_cid = os.urandom(CONNECTION_ID_LENGTH)
        token = self._retry.create_token(
            address=addr, original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=source_cid, now=self._now())
        assert header.version is not None
        self._reply(encode_quic_retry(
            version=header.version, source_cid=source_cid, destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid, retry_token=token), addr)

    def _open(self, header: QuicHeader, addr: Any) -> ServerConnection | None:
        try:
            original_cid = self._retry.validate_token(
                address=addr, destination_cid=header.destination_cid, token=header.token,
                now=self._now())
        except ValueError:
            return None  # forged or stale: the client gives up at its handshake timeout
        if self.connections >= self.settings.max_connections:
            self._make_room()
        quic = QuicConnection(configuration=self.configuration,
                              original_destination_connection_id=original_cid,
                              retry_source_connection_id=header.destination_cid)
        address = plain_address(addr)
        connection = ServerConnection(quic, self, address)
        for cid in (header.destination_cid, quic.host_cid):
            connection.cids.add(cid)
            self._by_cid[cid] = connection
        self._by_link[connection.link] = connection
        # A live connection that migrated away may still hold this address; the newcomer
        # takes it, and the older one's replies are dropped until its client re-handshakes.
        self._by_address[address] = connection
        self._rate.take(address[0], self._now())
        self._hold_unauthenticated(connection)
        return connection

    # -- what an unauthenticated client may cost ------------------------------------------
    def _refusal(self, host: str) -> str | None:
        """Why a new connection from `host` may not open now, if it may not."""
        settings = self.settings
        if self._unauthenticated_by_host.get(host, 0) >= settings.max_pending_per_source:
            return (f"{settings.max_pending_per_source} QUIC connections from this address "
                    "without a WireGuard handshake")
        if not self._rate.allows(host, self._now()):
            return (f"more than {NEW_CONNECTIONS_PER_SECOND:.0f} new QUIC connections a second "
                    "from this address")
        if self.connections >= settings.max_connections and not self.unauthenticated:
            return f"{settings.max_connections} QUIC connections open, all authenticated"
        return None

    def _make_room(self) -> None:
        """At `max_connections`, the oldest unauthenticated connection goes: a flood from
        many addresses then costs newcomers a race against its rate, not a wait for slots."""
        oldest = next(iter(self.unauthenticated))
        reason = (f"{self.settings.max_connections} QUIC connections open; closing the "
                  "oldest without a WireGuard handshake")
        self._refuse(oldest, reason)
        self._forget(oldest, ConnectionTerminated(
            error_code=QuicErrorCode.CONNECTION_REFUSED, frame_type=None, reason_phrase=reason))

    def _hold_unauthenticated(self, connection: ServerConnection) -> None:
        host = connection.address[0]
        deadline = self.socket.loop.call_later(self.settings.handshake_timeout, self._expire,
                                               connection)
        self.unauthenticated[connection] = _Unauthenticated(host, deadline)
        self._unauthenticated_by_host[host] = self._unauthenticated_by_host.get(host, 0) + 1

    def _release(self, connection: ServerConnection) -> None:
        """`connection` is no longer unauthenticated: a handshake completed over it, or it
        is gone."""
        state = self.unauthenticated.pop(connection, None)
        if state is None:
            return
        state.deadline.cancel()
        left = self._unauthenticated_by_host[state.host] - 1
        if left:
            self._unauthenticated_by_host[state.host] = left
        else:
            del self._unauthenticated_by_host[state.host]

    def _authenticated(self, address: Endpoint) -> None:
        """The hub completed a WireGuard handshake with a known peer over `address`."""
        connection = self._by_address.get(address)
        if connection is not None:
            self._release(connection)

    def _charge(self, connection: ServerConnection, size: int) -> bool:
        """Count bytes an unauthenticated connection sent; False once it has sent too many."""
        state = self.unauthenticated[connection]
        state.received += size
        if state.received <= MAX_UNAUTHENTICATED_BYTES:
            return True
        if state.received - size <= MAX_UNAUTHENTICATED_BYTES:
            self._refuse(connection, f"{MAX_UNAUTHENTICATED_BYTES} bytes without a WireGuard "
                                     "handshake")
        return False

    def _expire(self, connection: ServerConnection) -> None:
        if connection in self.unauthenticated:
            self._refuse(connection, "no WireGuard handshake within "
                                     f"{self.settings.handshake_timeout:.0f} s")

    def _refuse(self, connection: ServerConnection, reason: str) -> None:
        """Close an unauthenticated connection. It keeps its place in the counts until
        qh3 has drained it, so its client gets the slot back no sooner."""
        self.unauthenticated[connection].deadline.cancel()
        self._log.log(connection.address[0], logging.INFO, "%s: %s; closed",
                      connection.endpoint, reason,
                      extra=fields(transport="quic", endpoint=connection.endpoint))
        connection.link.quic.close(error_code=QuicErrorCode.CONNECTION_REFUSED,
                                   reason_phrase=reason)
        connection.link.transmit()

    def _reply(self, data: bytes, addr: Any) -> None:
        """Retry and Version Negotiation leave from the address the client wrote to."""
        self.socket.send([data], addr, self.local_address)

    def _now(self) -> float:
        return self.socket.loop.time()

    def _forget(self, connection: ServerConnection, event: ConnectionTerminated) -> None:
        self._release(connection)
        connection.link.stop()
        for cid in connection.cids:
            if self._by_cid.get(cid) is connection:
                del self._by_cid[cid]
        self._by_link.pop(connection.link, None)
        self.touched.pop(connection, None)
        if self._by_address.get(connection.address) is not connection:
            return
        del self._by_address[connection.address]
        self.hub.endpoint_closed(connection.address)
        log.debug("QUIC connection from %s ended: %s (code %d)", connection.endpoint,
                  event.reason_phrase or "no reason given", event.error_code,
                  extra=fields(transport="quic", endpoint=connection.endpoint))

    def close(self) -> None:
        """Close every connection (telling its client at once), then the socket."""
        for connection in list(self._by_link.values()):
            connection.link.quic.close()
            connection.link.transmit()
            connection.link.stop()
        for connection in list(self.unauthenticated):
            self._release(connection)
        self._by_cid.clear()
        self._by_link.clear()
        self._by_address.clear()
        self.socket.close()
