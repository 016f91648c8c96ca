"""The pieces of the QUIC data path that are plain logic: the byte-bounded message queue, the
tunnel window that keeps aioquic's pacing rate fixed, routing by destination connection id,
and that aioquic's pacer releases a whole PACER_BURST per call under that window."""

from __future__ import annotations

import ssl

from aioquic.buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from hypothesis import given
from hypothesis import strategies as st

from aura_common.config import QuicConfig
from aura_common.quic.link import (
    CONNECTION_ID_LENGTH,
    MAX_MESSAGE,
    MAX_TUNNEL_WINDOW,
    MIN_TUNNEL_WINDOW,
    PACER_BURST,
    QUIC_PACKET_SIZE,
    TUNNEL_PACING_RATE,
    MessageQueue,
    datagram_configuration,
    tunnel_window,
)
from services.quic.carrier import destination_cid, server_configuration
from tests.unit.test_tcp_carrier import Keys, keys

__all__ = ["keys"]

CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 8443)


def put_all(queue: MessageQueue, messages: list[bytes]) -> int:
    return sum(not queue.put(message) for message in messages)


def test_the_queue_is_bounded_in_bytes_not_messages() -> None:
    queue = MessageQueue(limit=3000)
    assert put_all(queue, [bytes(1000)] * 5) == 2
    assert queue.size == 3000 and len(queue) == 3
    assert not queue.put(bytes(10)), "full to the byte"
    assert queue.take(2) == [bytes(1000)] * 2
    assert queue.size == 1000
    assert put_all(queue, [bytes(10)] * 100) == 0, "small messages fit where a large one left"


def test_the_queue_refuses_a_message_no_packet_fits() -> None:
    queue = MessageQueue()
    assert put_all(queue, [bytes(MAX_MESSAGE + 1), bytes(MAX_MESSAGE)]) == 1
    assert queue.take(5) == [bytes(MAX_MESSAGE)]
    assert queue.size == 0 and len(queue) == 0


@given(st.lists(st.integers(min_value=0, max_value=MAX_MESSAGE + 50), max_size=60),
       st.integers(min_value=0, max_value=70))
def test_the_queue_keeps_order_and_count(sizes: list[int], take: int) -> None:
    queue = MessageQueue(limit=20_000)
    messages = [bytes([i % 256]) * size for i, size in enumerate(sizes)]
    dropped = put_all(queue, messages)
    kept: list[bytes] = []  # the rule: a message is kept when it fits a packet and the room left
    for message in messages:
        if len(message) <= MAX_MESSAGE and sum(map(len, kept)) + len(message) <= 20_000:
            kept.append(message)
    assert len(queue) == len(kept) and dropped == len(messages) - len(kept)
    assert queue.size <= 20_000
    taken = queue.take(take)
    assert taken == kept[:len(taken)] and len(taken) == min(take, len(kept))
    assert queue.size == sum(map(len, kept[len(taken):]))


@given(st.floats(min_value=1e-6, max_value=10.0))
def test_the_tunnel_window_paces_at_the_tunnel_rate(rtt: float) -> None:
    window = tunnel_window(rtt)
    assert MIN_TUNNEL_WINDOW <= window <= MAX_TUNNEL_WINDOW
    if MIN_TUNNEL_WINDOW < window < MAX_TUNNEL_WINDOW:
        assert abs(window / rtt - TUNNEL_PACING_RATE) / TUNNEL_PACING_RATE < 0.01


def test_destination_cid_is_read_from_either_header() -> None:
    cid = bytes(range(1, CONNECTION_ID_LENGTH + 1))
    short = bytes([0x40]) + cid + b"payload"
    assert destination_cid(short) == cid
    long_cid = bytes(range(20))
    long = bytes([0xC0]) + (1).to_bytes(4, "big") + bytes([len(long_cid)]) + long_cid + bytes(8)
    assert destination_cid(long) == long_cid
    header = pull_quic_header(Buffer(data=long + bytes(40)), host_cid_length=8)
    assert header.destination_cid == long_cid
    assert destination_cid(b"") == b"" and destination_cid(b"\xc0\0\0") == b""


def test_the_pacer_releases_a_whole_burst_per_call(keys: Keys) -> None:
    """What QuicLink.transmit relies on: after RTT samples at LAN and at loaded-tunnel round
    trips, one `datagrams_to_send` call sends PACER_BURST full packets, not a handful."""
    client_configuration = datagram_configuration(is_client=True, idle_timeout=30,
                                                  server_name="aura")
    client_configuration.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=client_configuration)
    server = QuicConnection(
        configuration=server_configuration(QuicConfig(), str(keys.directory / "tls.crt"),
                                           str(keys.directory / "tls.key")),
        original_destination_connection_id=client.original_destination_connection_id)
    now = 0.0
    client.connect(SERVER, now=now)
    for rtt in (0.0003, 0.0003, 0.02, 0.02, 0.02):
        for _ in range(4):  # the handshake, then one round trip per step
            for data, _ in client.datagrams_to_send(now=now):
                server.receive_datagram(data, CLIENT, now=now)
            now += rtt
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, SERVER, now=now)
        for _ in range(2):
            client.send_datagram_frame(bytes(64))
        now += 0.05
        sizes = [len(data) for data, _ in client.datagrams_to_send(now=now)]
        assert sizes, "the ping-sized messages went out"
        for _ in range(PACER_BURST * 2):
            client.send_datagram_frame(bytes(MAX_MESSAGE - 30))
        now += 0.05
        sent = client.datagrams_to_send(now=now)
        assert len(sent) >= PACER_BURST, f"rtt {rtt}: {len(sent)} packets"
        assert max(len(data) for data, _ in sent) <= QUIC_PACKET_SIZE
        now += 0.05
        assert len(client.datagrams_to_send(now=now)) == PACER_BURST * 2 - len(sent)
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT, now=now)
