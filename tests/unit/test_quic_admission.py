"""What aura-quic lets an unauthenticated client cost: connections in total and per source
address (however many share one UDP port), time without a WireGuard handshake, bytes."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import replace
from typing import Any

from qh3._hazmat import Buffer
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted
from qh3.quic.packet import SMALLEST_MAX_DATAGRAM_SIZE, pull_quic_header

from aura_common.config import QuicConfig
from aura_common.quic.link import CONNECTION_ID_LENGTH, datagram_configuration
from services.client.carriers.quic import Carrier as QuicClient
from services.quic.carrier import (
    MAX_UNAUTHENTICATED_BYTES,
    NEW_CONNECTIONS_PER_SECOND,
    SourceRate,
)
from tests.unit.carrier_kit import Initiator, Keys, keys, quic_server, run

__all__ = ["keys"]


class OnePortClients(asyncio.DatagramProtocol):
    """Several QUIC connections from one UDP port, as a flood from one source opens them."""

    def __init__(self, server: tuple[str, int], count: int) -> None:
        self.server = server
        self.connections: dict[bytes, QuicConnection] = {}
        for _ in range(count):
            configuration = datagram_configuration(is_client=True, idle_timeout=10)
            configuration.verify_mode = ssl.CERT_NONE
            quic = QuicConnection(configuration=configuration)
            self.connections[quic.host_cid] = quic
        self.established: set[QuicConnection] = set()
        self.terminated: set[QuicConnection] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        now = asyncio.get_running_loop().time()
        for quic in self.connections.values():
            quic.connect(self.server, now=now)
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        quic = self.connections.get(header.destination_cid)
        if quic is not None:
            quic.receive_datagram(data, addr, now=asyncio.get_running_loop().time())
            self.flush()

    def flush(self) -> None:
        now = asyncio.get_running_loop().time()
        assert self.transport is not None
        for quic in self.connections.values():
            for data, addr in quic.datagrams_to_send(now=now):
                self.transport.sendto(data, addr)
            while (event := quic.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    self.established.add(quic)
                elif isinstance(event, ConnectionTerminated):
                    self.terminated.add(quic)

    async def tick(self, seconds: float) -> None:
        """Drive the clients' QUIC timers (retransmissions, idle) for `seconds`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for quic in self.connections.values():
                timer = quic.get_timer()
                if timer is not None and timer <= loop.time():
                    quic.handle_timer(now=loop.time())
            self.flush()
            await asyncio.sleep(0.05)


async def open_from_one_port(port: int, count: int, local: str = "127.0.0.1",
                             seconds: float = 1.5) -> OnePortClients:
    clients = OnePortClients(("127.0.0.1", port), count)
    await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: clients, local_addr=(local, 0))
    await clients.tick(seconds)
    return clients


def test_connections_from_one_port_count_one_by_one(keys: Keys) -> None:
    async def scenario() -> None:
        settings = QuicConfig(max_connections=3)
        async with quic_server(keys, settings) as (carrier, port):
            clients = await open_from_one_port(port, 6)
            # each newcomer closed the oldest unauthenticated one to stay within the bound
            assert carrier.connections == 3
            assert len(clients.established) == 6
            for _ in range(10):  # their clients learn it by CONNECTION_CLOSE
                if len(clients.terminated) == 3:
                    break
                await clients.tick(0.5)
            assert len(clients.terminated) == 3
            assert clients.transport is not None
            clients.transport.close()

    run(scenario)


def test_unauthenticated_connections_are_bounded_per_source_address(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(QuicConfig(), max_pending_per_source=2)
        async with quic_server(keys, settings) as (carrier, port):
            flood = await open_from_one_port(port, 4, local="127.0.0.2")
            assert len(flood.established) == 2
            other = await open_from_one_port(port, 1, seconds=1)
            assert len(other.established) == 1  # another address has its own allowance
            assert carrier.pending == 3
            # one that completes a WireGuard handshake no longer counts against its address
            client = QuicClient(keys.client_config())
            initiator = Initiator(keys)
            async with asyncio.timeout(5):
                await client.open("127.0.0.1", port, initiator.deliver)
                await initiator.handshake(client)
            for _ in range(40):  # until the confirming data message has arrived
                if carrier.pending == 3:
                    break
                await asyncio.sleep(0.05)
            assert carrier.pending == 3
            late = await open_from_one_port(port, 1, seconds=1)
            assert len(late.established) == 1
            assert carrier.pending == 4
            client.close()
            for clients in (flood, other, late):
                assert clients.transport is not None
                clients.transport.close()

    run(scenario)


def test_no_wireguard_handshake_in_time_closes(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(QuicConfig(), handshake_timeout=1.0)
        async with quic_server(keys, settings) as (carrier, port):
            idle = await open_from_one_port(port, 2, seconds=0.5)
            assert len(idle.established) == 2
            await idle.tick(2.5)
            assert len(idle.terminated) == 2
            assert carrier.pending == 0 and carrier.connections == 0
            assert idle.transport is not None
            idle.transport.close()

    run(scenario)


def test_unauthenticated_bytes_are_bounded(keys: Keys) -> None:
    async def scenario() -> None:
        async with quic_server(keys, QuicConfig()) as (carrier, port):
            talker = await open_from_one_port(port, 1, seconds=0.5)
            quic = next(iter(talker.established))
            junk = b"\x01\0\0\0" + bytes(1000)  # an initiation's type, never a valid one
            for _ in range(MAX_UNAUTHENTICATED_BYTES // len(junk) + 8):
                try:
                    quic.send_datagram_frame(junk)
                except QuicConnectionError:
                    break  # closed by the server

                talker.flush()
                await asyncio.sleep(0.001)
            await talker.tick(1.5)
            assert talker.terminated == {quic}
            assert carrier.pending == 0
            assert talker.transport is not None
            talker.transport.close()

    run(scenario)


def test_version_negotiation_answers_only_datagrams_that_could_open_a_connection(
        keys: Keys) -> None:
    # A Version Negotiation packet echoes both connection ids: answering a 9-byte packet of
    # an unknown version with 11 bytes reflected more than a forged source sent.
    unknown_version = b"\xc0\x1a\x2a\x3a\x4a\x00\x00"

    async def answer(sock: socket.socket, port: int, data: bytes) -> bytes | None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(sock, data, ("127.0.0.1", port))
        try:
            async with asyncio.timeout(0.5):
                return await loop.sock_recv(sock, 2048)
        except TimeoutError:
            return None

    async def scenario() -> None:
        async with quic_server(keys, QuicConfig()) as (_, port):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.bind(("127.0.0.1", 0))
                for size in (7, 9, 100, SMALLEST_MAX_DATAGRAM_SIZE - 1):
                    padded = unknown_version + bytes(size - len(unknown_version))
                    assert await answer(sock, port, padded) is None, size
                whole = unknown_version + bytes(SMALLEST_MAX_DATAGRAM_SIZE - 7)
                negotiation = await answer(sock, port, whole)
                assert negotiation is not None and negotiation[1:5] == bytes(4)

    run(scenario)


class Churn(asyncio.DatagramProtocol):
    """One connection at a time from one address: each closed as soon as its QUIC handshake
    completes and the next opened at once."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.handshakes = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.quic: QuicConnection | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.open()

    def open(self) -> None:
        configuration = datagram_configuration(is_client=True, idle_timeout=10)
        configuration.verify_mode = ssl.CERT_NONE
        self.quic = QuicConnection(configuration=configuration)
        self.quic.connect(self.server, now=asyncio.get_running_loop().time())
        self.flush()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.quic is not None
        self.quic.receive_datagram(data, addr, now=asyncio.get_running_loop().time())
        self.flush()

    def flush(self) -> None:
        assert self.quic is not None and self.transport is not None
        for data, addr in self.quic.datagrams_to_send(now=asyncio.get_running_loop().time()):
            self.transport.sendto(data, addr)
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.handshakes += 1
                self.quic.close()
                self.flush()
                self.open()
                return

    async def run(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            assert self.quic is not None
            timer = self.quic.get_timer()
            if timer is not None and timer <= loop.time():
                self.quic.handle_timer(now=loop.time())
                self.flush()
            await asyncio.sleep(0.01)


def test_new_connections_are_rate_limited_per_source_address(keys: Keys) -> None:
    # A proven address that closes each connection and opens the next: before, a full QUIC
    # handshake each, as fast as the round trips went (about 30 a second one at a time).
    async def scenario() -> None:
        settings = QuicConfig()
        async with quic_server(keys, settings) as (_, port):
            churn = Churn(("127.0.0.1", port))
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: churn, local_addr=("127.0.0.3", 0))
            await churn.run(3.0)
            limit = settings.max_pending_per_source + 3.0 * NEW_CONNECTIONS_PER_SECOND + 1
            assert settings.max_pending_per_source <= churn.handshakes <= limit, churn.handshakes
            other = await open_from_one_port(port, 1, seconds=1)
            assert len(other.established) == 1  # another address has its own allowance
            for clients in (churn, other):
                assert clients.transport is not None
                clients.transport.close()

    run(scenario)


def test_the_source_rate_table_is_bounded() -> None:
    rate = SourceRate(1.0, 2, size=3)
    for n in range(5):
        rate.take(f"192.0.2.{n}", now=0.0)
    assert len(rate._buckets) == 3
    rate.take("192.0.2.4", now=0.0)
    assert not rate.allows("192.0.2.4", now=0.0)
    assert rate.allows("192.0.2.4", now=1.0)
    assert rate.allows("192.0.2.0", now=0.0)  # forgotten: a full burst again
