"""The QUIC carrier: aioquic with ALPN aura/1, one WireGuard message per DATAGRAM frame.

Each QUIC connection stands for one client. The hub knows it by a stable address, the remote
address the connection started from, so a client whose address changes (NAT rebinding, a new
network) keeps its WireGuard session: aioquic follows the migration and the hub never notices.

Python pays per call, so the data path moves bursts: everything one socket read returns is fed
to aioquic first, then each connection's WireGuard messages go to the hub in one call, and each
connection packs and sends what is due (acknowledgements, replies) in one `transmit`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import socket
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE, QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer

from aura_common.config import QuicConfig
from aura_common.errors import ConfigError
from aura_common.framing import ALPN
from aura_common.log import RateLimitedLog, fields
from aura_common.transport import Address, SessionHub, format_endpoint
from services.quic.datagram import Burst, DatagramSocket

log = logging.getLogger("aura-quic")
# aioquic logs every connection's version and ALPN at INFO, without the fields ours carry.
logging.getLogger("quic").setLevel(logging.WARNING)

# The largest UDP payload of a QUIC packet, either way: one that crosses a 1500-byte path under
# an IPv6 and a UDP header unfragmented (RFC 9000 section 14). aioquic starts a new packet
# rather than exceed it (an ACK and a message that do not fit together go in two), and it
# announces no smaller max_udp_payload_size, so either side accepts larger packets from an
# older peer.
QUIC_PACKET_SIZE = 1500 - 40 - 8
CONNECTION_ID_LENGTH = 8
AEAD_TAG_SIZE = 16
# What a message costs in a 1-RTT packet as aioquic builds it: the short header (flags byte,
# the peer's connection id, packet number), the AEAD tag, and the DATAGRAM frame's type and
# 2-byte length.
DATAGRAM_OVERHEAD = 1 + CONNECTION_ID_LENGTH + PACKET_NUMBER_SEND_SIZE + AEAD_TAG_SIZE + 1 + 2
# The largest WireGuard message queued; larger ones are dropped. It allows for the longest
# connection ids and packet numbers a peer may choose: a message no packet fits would stall
# aioquic's datagram queue. The client's tunnel MTU keeps its messages within it.
MAX_MESSAGE = QUIC_PACKET_SIZE - 1 - 20 - 4 - AEAD_TAG_SIZE - 3
# DATAGRAM frames waiting for the window; beyond this they are dropped, as a full NIC queue
# would, instead of adding latency.
MAX_QUEUED = 512
# Bytes in flight the tunnel controller allows: far above any bandwidth-delay product a
# Python carrier reaches, it only bounds what aioquic tracks while acknowledgements stall.
TUNNEL_WINDOW = 8 << 20
TUNNEL_CONGESTION_CONTROL = "aura-tunnel"


class TunnelCongestionControl(QuicCongestionControl):
    """A fixed window that ignores loss.

    The flows inside the tunnel run congestion control end to end and back off on the loss
    they see. A second controller in series (aioquic's Reno or CUBIC) halves its window on the
    very same loss and throttles the whole tunnel to a fraction of the path; WireGuard over UDP
    has no such layer either. DATAGRAM frames are never retransmitted, so nothing else depends
    on the window.
    """

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = TUNNEL_WINDOW

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        pass

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        pass


register_congestion_control(TUNNEL_CONGESTION_CONTROL, TunnelCongestionControl)


class _Unpaced(QuicPacketPacer):
    """No pacing, for the same reason: the flows inside pace themselves. aioquic's pacer
    would release 16 packets per `transmit` and leave the rest of a burst to a timer, which
    costs a loop turn and a packing pass per 16 packets."""

    def next_send_time(self, now: float) -> None:  # type: ignore[override]
        return None


def datagram_configuration(*, is_client: bool, idle_timeout: float,
                           server_name: str | None = None) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        congestion_control_algorithm=TUNNEL_CONGESTION_CONTROL,
        connection_id_length=CONNECTION_ID_LENGTH,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=65535,
        max_datagram_size=QUIC_PACKET_SIZE,
        server_name=server_name,
    )


def server_configuration(settings: QuicConfig, cert_file: str, key_file: str
                         ) -> QuicConfiguration:
    configuration = datagram_configuration(is_client=False, idle_timeout=settings.idle_timeout)
    try:
        configuration.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise ConfigError(error.filename, "", "the TLS certificate and key "
                          "(`aura server init` creates them)") from None
    except (ValueError, OSError) as error:
        raise ConfigError(cert_file, "", f"a PEM certificate matching {key_file}",
                          str(error)) from None
    return configuration


def queue_datagrams(quic: QuicConnection, datagrams: Sequence[bytes]) -> int:
    """Queue WireGuard messages as DATAGRAM frames; returns how many were dropped."""
    # aioquic has no public view of its datagram queue; its length bounds our latency.
    room = MAX_QUEUED - len(quic._datagrams_pending)
    dropped = 0
    for datagram in datagrams:
        if room <= 0 or len(datagram) > MAX_MESSAGE:
            dropped += 1
            continue
        quic.send_datagram_frame(datagram)
        room -= 1
    return dropped


def plain_address(addr: Any) -> Address:
    host, port = addr[0], addr[1]
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        host = str(address.ipv4_mapped)
    return host, port


class _Outbox(asyncio.DatagramTransport):
    """What aioquic's protocol takes for its transport: it collects one transmit's packets."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: list[tuple[bytes, Any]] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.packets.append((data, addr))


class BatchedProtocol(QuicConnectionProtocol):
    """aioquic's connection driver on a `DatagramSocket`.

    Received packets are only fed to the connection; the owner calls `transmit` once the whole
    burst is in. The packets one `transmit` produces leave in GSO batches from
    `local_address` (the address the peer writes to).
    """

    def __init__(self, quic: QuicConnection, sock: DatagramSocket) -> None:
        super().__init__(quic)
        quic._loss._pacer = _Unpaced(max_datagram_size=QUIC_PACKET_SIZE)
        self.socket = sock
        self.local_address: str | None = None
        self._outbox = _Outbox()
        self._transport = self._outbox

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # packets leave through self.socket, see transmit()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        assert isinstance(data, bytes)
        self._quic.receive_datagram(data, addr, now=self._loop.time())
        self._process_events()

    def transmit(self) -> None:
        super().transmit()
        packets, self._outbox.packets = self._outbox.packets, []
        for destination, group in itertools.groupby(packets, key=itemgetter(1)):
            self.socket.send([data for data, _ in group], destination, self.local_address)

    def stop_timers(self) -> None:
        """Leave the connection for good: aioquic's timer would keep it sending."""
        for handle in (self._timer, self._transmit_task):
            if handle is not None:
                handle.cancel()
        self._timer = self._transmit_task = None


class AuraQuicProtocol(BatchedProtocol):
    """One client connection: DATAGRAM frames in and out, nothing else."""

    def __init__(self, quic: QuicConnection, carrier: QuicCarrier) -> None:
        super().__init__(quic, carrier.socket)
        self.carrier = carrier
        self.address: Address | None = None
        self.batch: list[bytes] = []

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.address is None:
            self.address = self.carrier.register(self, plain_address(addr))
        self.local_address = self.carrier.local_address
        super().datagram_received(data, addr)
        self.carrier.touched[self] = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.batch.append(event.data)
        elif isinstance(event, HandshakeCompleted):
            log.debug("QUIC connection from %s", self.endpoint,
                      extra=fields(transport="quic", endpoint=self.endpoint))
        elif isinstance(event, StreamDataReceived):
            self.close(QuicErrorCode.PROTOCOL_VIOLATION, "aura/1 carries DATAGRAM frames only")
        elif isinstance(event, ConnectionTerminated):
            self.carrier.unregister(self, event)

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.address) if self.address else "?"


class _Replies(asyncio.DatagramTransport):
    """aioquic's server logic sends Retry and Version Negotiation packets here: they leave
    from the local address of the datagram being handled."""

    def __init__(self, carrier: QuicCarrier) -> None:
        super().__init__()
        self.carrier = carrier

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.carrier.socket.send([data], addr, self.carrier.local_address)

    def close(self) -> None:
        self.carrier.socket.close()


class QuicCarrier(QuicServer):
    """aioquic's server on one UDP socket, bound to the session hub.

    Refuses new connections beyond `max_connections`; Retry makes a client prove its address
    before it may hold a connection slot.
    """

    def __init__(self, hub: SessionHub, sock: socket.socket, *,
                 configuration: QuicConfiguration, max_connections: int) -> None:
        super().__init__(configuration=configuration, create_protocol=self._new_protocol,
                         retry=True)
        self.hub = hub
        hub.carrier = self
        self.max_connections = max_connections
        self.socket = DatagramSocket(sock, self._burst)
        self.connection_made(_Replies(self))
        self.dropped = 0  # DATAGRAM frames not queued: queue full or message too large
        # The local address the datagram being handled was sent to.
        self.local_address: str | None = None
        # Connections with received packets or queued messages in this burst (ordered set).
        self.touched: dict[AuraQuicProtocol, None] = {}
        self._by_address: dict[Address, AuraQuicProtocol] = {}
        self._receiving = False
        self._log = RateLimitedLog(log)

    @property
    def connections(self) -> int:
        return len(self._by_address)

    def _new_protocol(self, quic: QuicConnection, **kwargs: Any) -> AuraQuicProtocol:
        return AuraQuicProtocol(quic, self)

    # -- socket side --------------------------------------------------------------------
    def _burst(self, burst: Burst) -> None:
        self._receiving = True
        try:
            for datagrams, source, local in burst:
                self.local_address = local
                for data in datagrams:
                    self.datagram_received(data, source)
            for protocol in list(self.touched):
                if protocol.batch and protocol.address is not None:
                    batch, protocol.batch = protocol.batch, []
                    self.hub.received(batch, protocol.address)
        finally:
            self._receiving = False
        touched, self.touched = self.touched, {}
        for protocol in touched:
            protocol.transmit()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.connections >= self.max_connections and self._opens_connection(data):
            host = plain_address(addr)[0]
            self._log.log(host, logging.INFO, "%d QUIC connections open; refusing %s",
                          self.max_connections, format_endpoint(plain_address(addr)),
                          extra=fields(transport="quic", endpoint=host))
            return
        super().datagram_received(data, addr)

    def _opens_connection(self, data: bytes | str) -> bool:
        assert isinstance(data, bytes)
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            return False
        return (header.packet_type == QuicPacketType.INITIAL
                and header.destination_cid not in self._protocols)

    def close(self) -> None:
        """Close every connection (telling its client at once), then the socket."""
        protocols = cast(set[AuraQuicProtocol], set(self._protocols.values()))
        super().close()
        for protocol in protocols:
            protocol.stop_timers()

    # -- hub side -----------------------------------------------------------------------
    def register(self, protocol: AuraQuicProtocol, address: Address) -> Address:
        # A live connection that migrated away may still hold this address; the newcomer
        # takes it, and the older one's replies are dropped until its client re-handshakes.
        self._by_address[address] = protocol
        return address

    def unregister(self, protocol: AuraQuicProtocol, event: ConnectionTerminated) -> None:
        address = protocol.address
        if address is None or self._by_address.get(address) is not protocol:
            return
        del self._by_address[address]
        self.hub.endpoint_closed(address)
        log.debug("QUIC connection from %s ended: %s (code %d)", protocol.endpoint,
                  event.reason_phrase or "no reason given", event.error_code,
                  extra=fields(transport="quic", endpoint=protocol.endpoint))

    def transmit(self, destination: Address, datagrams: Sequence[bytes]) -> None:
        protocol = self._by_address.get(destination)
        if protocol is None:
            return
        self.dropped += queue_datagrams(protocol._quic, datagrams)
        if self._receiving:
            self.touched[protocol] = None  # sent with the burst's acknowledgements
        else:
            protocol.transmit()
