"""The pieces of the QUIC data path that are plain logic: routing by destination connection id,
Retry tokens, and that qh3 sends every queued message in one call."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qh3._hazmat import Buffer
from qh3.quic.connection import QuicConnection
from qh3.quic.events import ConnectionTerminated, DatagramFrameReceived, HandshakeCompleted
from qh3.quic.packet import pull_quic_header

from aura_common.config import QuicConfig
from aura_common.quic.datagram import DatagramSocket
from aura_common.quic.link import (
    CONNECTION_ID_LENGTH,
    MAX_MESSAGE,
    QUIC_PACKET_SIZE,
    QuicLink,
    datagram_configuration,
)
from services.quic.carrier import destination_cid, server_configuration
from services.quic.retry import TOKEN_LIFETIME, RetryTokens
from tests.unit.carrier_kit import Keys, keys

__all__ = ["keys"]

CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 8443)
BURST = 256  # more than one TUN read brings


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


def unconnected_pair(keys: Keys, idle_timeout: float = 30) -> tuple[QuicConnection,
                                                                     QuicConnection]:
    client_configuration = datagram_configuration(is_client=True, idle_timeout=idle_timeout,
                                                  server_name="aura")
    client_configuration.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=client_configuration)
    server = QuicConnection(
        configuration=server_configuration(QuicConfig(), str(keys.directory / "tls.crt"),
                                           str(keys.directory / "tls.key")),
        original_destination_connection_id=client.original_destination_connection_id)
    return client, server


def test_every_queued_message_leaves_in_one_call(keys: Keys) -> None:
    """What QuicLink.transmit relies on: qh3 neither paces nor windows DATAGRAM frames, so one
    `datagrams_to_send` sends all that is queued, at LAN and at loaded-tunnel round trips,
    each in a packet that crosses a 1500-byte path."""
    client, server = unconnected_pair(keys)
    now = 0.0
    client.connect(SERVER, now=now)
    for rtt in (0.0003, 0.02):
        for _ in range(4):  # the handshake, then one round trip per step
            for data, _ in client.datagrams_to_send(now=now):
                server.receive_datagram(data, CLIENT, now=now)
            now += rtt
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, SERVER, now=now)
        for _ in range(BURST):
            client.send_datagram_frame(bytes(MAX_MESSAGE - 30))
        sent = client.datagrams_to_send(now=now)
        assert len(sent) == BURST, f"rtt {rtt}: {len(sent)} packets"
        assert max(len(data) for data, _ in sent) <= QUIC_PACKET_SIZE
        server.receive_many_datagrams([data for data, _ in sent], CLIENT, now=now)
        received = 0
        while (event := server.next_event()) is not None:
            received += isinstance(event, DatagramFrameReceived)
        assert received == BURST


def test_a_retry_token_opens_only_for_its_address_and_connection_id() -> None:
    tokens = RetryTokens()
    original, retry_cid = bytes(range(8)), bytes(range(8, 16))
    token = tokens.create_token(address=CLIENT, original_destination_connection_id=original,
                                retry_source_connection_id=retry_cid, now=100.0)
    assert tokens.validate_token(address=CLIENT, destination_cid=retry_cid, token=token,
                                 now=101.0) == original
    for address, cid, now in ((("192.0.2.9", 40000), retry_cid, 101.0),
                              (("192.0.2.1", 40001), retry_cid, 101.0),
                              (CLIENT, original, 101.0),
                              (CLIENT, retry_cid, 100.0 + TOKEN_LIFETIME + 0.1),
                              (CLIENT, retry_cid, 99.0)):
        with pytest.raises(ValueError):
            tokens.validate_token(address=address, destination_cid=cid, token=token, now=now)
    with pytest.raises(ValueError):
        RetryTokens().validate_token(address=CLIENT, destination_cid=retry_cid, token=token,
                                     now=101.0)


@given(st.binary(max_size=300), st.binary(max_size=30))
def test_a_forged_retry_token_is_refused(token: bytes, cid: bytes) -> None:
    with pytest.raises(ValueError):
        RetryTokens().validate_token(address=CLIENT, destination_cid=cid, token=token,
                                     now=1.0)


class Wire:
    """Stands in for the DatagramSocket under a client QuicLink: hands its packets straight to
    a server connection and the server's answers back, on the event loop's clock."""

    def __init__(self, server: QuicConnection) -> None:
        self.server = server
        self.link: QuicLink | None = None
        self.loop = asyncio.get_running_loop()

    def send(self, datagrams: Sequence[bytes], destination: Any, source: Any = None) -> None:
        now = self.loop.time()
        self.server.receive_many_datagrams(list(datagrams), CLIENT, now)
        while self.server.next_event() is not None:
            pass
        answers = [data for data, _ in self.server.datagrams_to_send(now=now)]
        if answers and self.link is not None:
            self.loop.call_soon(self.link.receive, answers, SERVER)


def test_the_timer_is_armed_once_per_slack_not_per_send(keys: Keys) -> None:
    """qh3 moves its deadline with every send and receive; the link keeps one armed asyncio
    timer while the new deadline is within TIMER_SLACK of it, yet still fires: the idle
    timeout ends a connection that falls silent."""
    terminated: list[float] = []

    def on_timer_events(link: QuicLink) -> None:
        for event in link.events():
            if isinstance(event, ConnectionTerminated):
                terminated.append(loop.time())

    async def scenario() -> None:
        client, server = unconnected_pair(keys, idle_timeout=0.5)
        wire = Wire(server)
        link = QuicLink(client, cast(DatagramSocket, wire), on_timer_events)
        wire.link = link
        client.connect(SERVER, now=loop.time())
        link.transmit()
        for _ in range(50):
            await asyncio.sleep(0.002)
            if any(isinstance(event, HandshakeCompleted) for event in link.events()):
                break
        arms = 0
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any,
                             **kwargs: Any) -> asyncio.TimerHandle:
            nonlocal arms
            arms += callback == link._fire
            return call_at(when, callback, *args, **kwargs)

        loop.call_at = counting_call_at  # type: ignore[method-assign, assignment]
        for _ in range(100):  # a send every 0.1 ms, each moving qh3's deadline
            link.send([bytes(1000)])
            await asyncio.sleep(0.0001)
        loop.call_at = call_at  # type: ignore[method-assign]
        assert client.get_timer() is not None and arms > 0
        assert arms <= 100 // 4, f"{arms} timers armed for 100 sends"
        silent_from = loop.time()
        await asyncio.sleep(0.5 + 1.5)
        assert terminated, "the idle timeout fired"
        assert terminated[0] - silent_from < 0.5 + 1.0
        link.stop()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
