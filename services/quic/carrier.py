"""The QUIC carrier: aioquic with ALPN aura/1, one WireGuard message per DATAGRAM frame.

Each QUIC connection stands for one client. The hub knows it by a stable address, the remote
address the connection started from, so a client whose address changes (NAT rebinding, a new
network) keeps its WireGuard session: aioquic follows the migration and the hub never notices.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StreamDataReceived,
)
from aioquic.quic.packet import QuicErrorCode, QuicPacketType, pull_quic_header

from aura_common.config import QuicConfig
from aura_common.errors import ConfigError
from aura_common.framing import ALPN
from aura_common.log import RateLimitedLog, fields
from aura_common.transport import Address, SessionHub, format_endpoint

log = logging.getLogger("aura-quic")
# aioquic logs every connection's version and ALPN at INFO, without the fields ours carry.
logging.getLogger("quic").setLevel(logging.WARNING)

# UDP payload of one QUIC packet. A full 1420-byte tunnel packet is a 1452-byte WireGuard
# message; with QUIC's short header, AEAD tag and DATAGRAM frame header that is ~1482 bytes.
QUIC_PACKET_SIZE = 1500
# The largest WireGuard message one DATAGRAM frame fits (long connection ids, 4-byte packet
# numbers); a larger one could never be sent and would stall aioquic's datagram queue.
MAX_MESSAGE = QUIC_PACKET_SIZE - 1 - 20 - 4 - 16 - 3
# DATAGRAM frames waiting for congestion window; beyond this they are dropped, as a full
# NIC queue would, instead of adding latency.
MAX_QUEUED = 512


def datagram_configuration(*, is_client: bool, idle_timeout: float,
                           server_name: str | None = None) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
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


class AuraQuicProtocol(QuicConnectionProtocol):
    """One client connection: DATAGRAM frames in and out, nothing else."""

    def __init__(self, quic: QuicConnection, *, carrier: QuicCarrier, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.carrier = carrier
        self.address: Address | None = None
        self._batch: list[bytes] = []

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.address is None:
            self.address = self.carrier.register(self, plain_address(addr))
        super().datagram_received(data, addr)
        if self._batch:
            batch, self._batch = self._batch, []
            self.carrier.hub.received(batch, self.address)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self._batch.append(event.data)
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

    def send(self, datagrams: Sequence[bytes]) -> None:
        self.carrier.dropped += queue_datagrams(self._quic, datagrams)
        self.transmit()


class QuicCarrier:
    def __init__(self, hub: SessionHub) -> None:
        self.hub = hub
        hub.carrier = self
        self._by_address: dict[Address, AuraQuicProtocol] = {}
        self.dropped = 0

    @property
    def connections(self) -> int:
        return len(self._by_address)

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
        if protocol is not None:
            protocol.send(datagrams)

    def create_protocol(self) -> Callable[..., AuraQuicProtocol]:
        def create(quic: QuicConnection, **kwargs: Any) -> AuraQuicProtocol:
            return AuraQuicProtocol(quic, carrier=self, **kwargs)

        return create


class BoundedQuicServer(QuicServer):
    """aioquic's server, refusing new connections beyond `max_connections`."""

    def __init__(self, *, carrier: QuicCarrier, max_connections: int,
                 configuration: QuicConfiguration) -> None:
        # Retry makes a client prove its address before it may hold a connection slot.
        super().__init__(configuration=configuration, create_protocol=carrier.create_protocol(),
                         retry=True)
        self.carrier, self.max_connections = carrier, max_connections
        self._log = RateLimitedLog(log)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.carrier.connections >= self.max_connections and self._opens_connection(data):
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
