"""The tunnel MTU over QUIC: what aioquic really adds around a WireGuard message, the arithmetic
that turns a 1500-byte path into the client's tunnel MTU, and that no packet either side builds
exceeds the size that crosses such a path unfragmented."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qh3.quic.connection import QuicConnection
from qh3.quic.events import DatagramFrameReceived, HandshakeCompleted

from aura_common.config import QuicConfig
from aura_common.quic.link import (
    DATAGRAM_OVERHEAD,
    MAX_MESSAGE,
    QUIC_PACKET_SIZE,
    datagram_configuration,
)
from services.client.carriers import CARRIERS, quic, tcp, udp
from services.client.carriers.base import WIREGUARD_OVERHEAD, tunnel_mtu_within
from services.client.carriers.quic import TUNNEL_MTU
from services.client.path import tunnel_mtu
from services.quic.carrier import server_configuration
from tests.unit.carrier_kit import Keys, keys

__all__ = ["keys"]

IPV6_HEADER = 40
UDP_HEADER = 8
CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 8443)


class Pair:
    """A client and a server aioquic connection joined in memory, past the handshake."""

    def __init__(self, keys: Keys) -> None:
        client_configuration = datagram_configuration(is_client=True, idle_timeout=30,
                                                      server_name="aura")
        client_configuration.verify_mode = ssl.CERT_NONE
        self.client = QuicConnection(configuration=client_configuration)
        self.server = QuicConnection(
            configuration=server_configuration(QuicConfig(), str(keys.directory / "tls.crt"),
                                               str(keys.directory / "tls.key")),
            original_destination_connection_id=self.client.original_destination_connection_id)
        self.now = 0.0
        self.completed: set[int] = set()
        self.received: list[bytes] = []
        self.client.connect(SERVER, now=self.now)
        for _ in range(4):
            self.flush(self.client)
            self.flush(self.server)
        assert self.completed == {id(self.client), id(self.server)}

    def flush(self, sender: QuicConnection) -> list[int]:
        """Deliver what `sender` has to send; returns the UDP payload sizes."""
        receiver, source = ((self.server, CLIENT) if sender is self.client
                            else (self.client, SERVER))
        sizes = []
        self.now += 0.001  # as on a real clock: aioquic's pacer lets the next burst go
        for data, _ in sender.datagrams_to_send(now=self.now):
            sizes.append(len(data))
            receiver.receive_datagram(data, source, now=self.now)
        while (event := receiver.next_event()) is not None:
            if isinstance(event, DatagramFrameReceived):
                self.received.append(event.data)
            elif isinstance(event, HandshakeCompleted):
                self.completed.add(id(receiver))
        return sizes


@pytest.fixture
def pair(keys: Keys) -> Iterator[Pair]:
    pair = Pair(keys)
    pair.flush(pair.client)
    pair.flush(pair.server)  # nothing left over from the handshake
    pair.received.clear()
    yield pair


@pytest.mark.parametrize("side", ["client", "server"])
def test_aioquic_adds_the_counted_overhead_to_a_message(pair: Pair, side: str) -> None:
    sender = getattr(pair, side)
    for size in (200, 1000, QUIC_PACKET_SIZE - DATAGRAM_OVERHEAD):
        sender.send_datagram_frame(bytes(size))
        assert pair.flush(sender) == [size + DATAGRAM_OVERHEAD]
    assert DATAGRAM_OVERHEAD == 30


def test_a_largest_message_and_a_due_ack_go_in_two_packets(pair: Pair) -> None:
    """aioquic starts a new packet rather than grow one past QUIC_PACKET_SIZE."""
    largest = bytes(QUIC_PACKET_SIZE - DATAGRAM_OVERHEAD)
    for _ in range(3):  # the server acknowledges these with its next packet
        pair.client.send_datagram_frame(largest)
    pair.flush(pair.client)
    pair.now += 0.1  # past the acknowledgement delay
    for _ in range(8):
        pair.server.send_datagram_frame(largest)
    sizes = pair.flush(pair.server)
    assert max(sizes) == QUIC_PACKET_SIZE
    assert len(sizes) == 8 + 1, "the acknowledgement in a packet of its own"
    assert pair.received.count(largest) == 3 + 8


def test_the_quic_tunnel_mtu_fits_a_1500_byte_path_under_ipv6() -> None:
    assert TUNNEL_MTU == 1376
    largest_ip_packet = (TUNNEL_MTU + WIREGUARD_OVERHEAD + DATAGRAM_OVERHEAD + UDP_HEADER
                         + IPV6_HEADER)
    assert largest_ip_packet <= 1500
    assert TUNNEL_MTU + WIREGUARD_OVERHEAD <= MAX_MESSAGE, "the server queues what fits it"


def test_each_carrier_declares_its_ceiling() -> None:
    assert {"udp": udp.Carrier, "quic": quic.Carrier, "tcp": tcp.Carrier} == CARRIERS
    assert quic.Carrier.tunnel_mtu == TUNNEL_MTU
    assert udp.Carrier.tunnel_mtu is None
    assert tcp.Carrier.tunnel_mtu is None


@given(st.integers(min_value=WIREGUARD_OVERHEAD + 16, max_value=65535))
def test_tunnel_mtu_within_is_the_largest_padded_fit(message_size: int) -> None:
    mtu = tunnel_mtu_within(message_size)
    assert mtu % 16 == 0
    assert mtu + WIREGUARD_OVERHEAD <= message_size < mtu + 16 + WIREGUARD_OVERHEAD


@given(st.integers(min_value=1280, max_value=9000),
       st.one_of(st.none(), st.integers(min_value=1280, max_value=9000)))
def test_the_path_mtu_is_the_config_lowered_to_the_carrier(configured: int,
                                                           ceiling: int | None) -> None:
    mtu = tunnel_mtu(configured, ceiling)
    assert mtu <= configured
    assert mtu == configured if ceiling is None else mtu == min(configured, ceiling)


def test_the_config_mtu_stays_where_it_is_lower() -> None:
    assert tunnel_mtu(1420, TUNNEL_MTU) == 1376
    assert tunnel_mtu(1280, TUNNEL_MTU) == 1280
    assert tunnel_mtu(1420, None) == 1420
