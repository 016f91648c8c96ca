"""aura-tcp's carrier on loopback: real TLS, a real SessionHub and a real WireGuard initiator."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from aura_common.config import (
    FallbackHandler,
    TcpConfig,
)
from aura_common.pki import ca
from aura_common.wire.framing import encode
from aura_common.wireguard import Device, Transmit, generate_private_key
from aura_common.wireguard import public_key as wg_public_key
from services.client.carriers.tcp import Carrier as TcpClient
from services.tcp import carrier as tcp_carrier
from services.tcp.carrier import (
    MAX_UNAUTHENTICATED_BYTES,
    MAX_UNAUTHENTICATED_READS,
    TcpCarrier,
    server_tls_context,
)
from services.tcp.clienthello import MAX_RECORDS
from services.tcp.fallback import FallbackChain
from tests.unit.carrier_kit import Initiator, Keys, keys, new_hub, raw_key, run

__all__ = ["keys"]  # the module-scoped key fixture

DECOY_ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\ndecoy"


@contextlib.asynccontextmanager
async def tcp_server(keys: Keys, settings: TcpConfig) -> AsyncIterator[tuple[TcpCarrier, int]]:
    tls = server_tls_context(str(keys.directory / "tls.crt"), str(keys.directory / "tls.key"))
    carrier = TcpCarrier(new_hub(keys), settings, tls, FallbackChain.from_config(settings))
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    server = await carrier.serve(sock)
    try:
        yield carrier, server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def closed_by_server(reader: asyncio.StreamReader, within: float = 3) -> None:
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(65536):
                pass


async def started_hello(host: str, port: int, **kwargs: object
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that sent the first byte of a TLS record and stalled."""
    reader, writer = await asyncio.open_connection(host, port, **kwargs)  # type: ignore[arg-type]
    writer.write(b"\x16")
    return reader, writer


def tls_client(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    return context


def test_wireguard_handshake_and_data_over_tls(keys: Keys) -> None:
    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (carrier, port):
            client = TcpClient(keys.client_config())
            initiator = Initiator(keys)
            await client.open("127.0.0.1", port, initiator.deliver)
            await initiator.handshake(client)
            await asyncio.sleep(0.1)
            assert carrier.connections == 1
            assert carrier.pending == 0  # a completed handshake: no longer unauthenticated
            peer = next(iter(carrier.hub.device.peers))
            assert peer.endpoint is not None and peer.endpoint[0] == "127.0.0.1"
            client.close()
            assert await client.wait_closed() == "closed by the client"
            await asyncio.sleep(0.1)
            assert carrier.connections == 0
            assert peer.endpoint is None  # the hub was told the connection went

    run(scenario)


def test_server_closing_is_reported_to_the_client(keys: Keys) -> None:
    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig(idle_timeout=0.5)) as (_, port):
            client = TcpClient(keys.client_config())
            await client.open("127.0.0.1", port, lambda datagrams: None)
            async with asyncio.timeout(3):
                reason = await client.wait_closed()
            assert "closed" in reason

    run(scenario)


def test_client_refuses_a_certificate_from_another_ca(keys: Keys, tmp_path: Path) -> None:
    other_raw = raw_key(ca.create_ca(tmp_path))

    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (_, port):
            client = TcpClient(keys.client_config(ca_public=other_raw))
            with pytest.raises(ConnectionError, match="not signed by this config's Aura CA"):
                await client.open("127.0.0.1", port, lambda datagrams: None)

    run(scenario)


def test_other_alpn_and_plain_http_reach_the_decoy(keys: Keys) -> None:
    async def decoy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(DECOY_ANSWER)
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        upstream = await asyncio.start_server(decoy, "127.0.0.1", 0)
        address = upstream.sockets[0].getsockname()[:2]
        settings = TcpConfig(fallback=(FallbackHandler("proxy", address),))
        async with tcp_server(keys, settings) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            async with asyncio.timeout(3):
                assert await reader.read() == DECOY_ANSWER
            writer.close()
            # TLS offering only http/1.1: the raw ClientHello reaches the decoy, which
            # answers in plain HTTP, so the TLS client sees a protocol error, not our cert.
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with asyncio.timeout(3):
                    await asyncio.open_connection("127.0.0.1", port,
                                                  ssl=tls_client(["http/1.1"]))
        upstream.close()

    run(scenario)


def test_reject_closes_other_alpn(keys: Keys) -> None:
    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (_, port):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with asyncio.timeout(3):
                    await asyncio.open_connection("127.0.0.1", port, ssl=tls_client(["h2"]))

    run(scenario)


def test_garbage_after_the_tls_handshake_closes(keys: Keys) -> None:
    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (carrier, port):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_client(["aura/1"]))
            writer.write(encode([b"\x09 not wireguard"]))
            await closed_by_server(reader)
            writer.close()
            assert carrier.connections == 0

    run(scenario)


def test_pending_connections_are_bounded_and_time_out(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(TcpConfig(), max_pending=3, handshake_timeout=0.8)
        async with tcp_server(keys, settings) as (carrier, port):
            # each sends a first byte of a ClientHello, then nothing
            idle = [await started_hello("127.0.0.1", port) for _ in range(5)]
            await asyncio.sleep(0.2)
            assert carrier.pending == 3
            await closed_by_server(idle[0][0], within=0.5)  # the oldest made room
            await closed_by_server(idle[1][0], within=0.5)
            # a stalled TLS handshake: half a ClientHello, then nothing
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            started = asyncio.get_running_loop().time()
            await closed_by_server(reader, within=2)
            assert asyncio.get_running_loop().time() - started < 1.5
            for _, w in idle:
                w.close()
            await asyncio.sleep(0.1)
            assert carrier.pending == 0

    run(scenario)


def stranger_initiations(keys: Keys, count: int) -> list[bytes]:
    """Initiations with a valid mac1 (the server's public key is no secret) from an unknown
    key: enough of them put the server under load, and it answers with cookie replies."""
    stranger = Device(generate_private_key(), mtu=1420)
    peer = stranger.add_peer(wg_public_key(keys.server_private), endpoint=("127.0.0.1", 1))
    messages = []
    for attempt in range(count):
        for event in stranger.initiate(peer, 1000.0 + attempt):
            if isinstance(event, Transmit):
                messages.extend(event.datagrams)
    return messages


async def read_frames(reader: asyncio.StreamReader, within: float) -> list[bytes]:
    frames: list[bytes] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                frames.append(await reader.readexactly(size))
    return frames


def test_a_cookie_reply_leaves_the_connection_unauthenticated(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(TcpConfig(), handshake_timeout=1.5)
        async with tcp_server(keys, settings) as (carrier, port):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_client(["aura/1"]))
            started = asyncio.get_running_loop().time()
            writer.write(encode(stranger_initiations(keys, 200)))
            answers = await read_frames(reader, within=0.5)
            assert answers and {frame[0] for frame in answers} == {3}  # cookie replies
            assert carrier.pending == 1
            await closed_by_server(reader, within=2)
            assert asyncio.get_running_loop().time() - started < 2.5
            writer.close()
            assert carrier.pending == 0

    run(scenario)


def test_pending_connections_are_bounded_per_source_address(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(TcpConfig(), max_pending=100, max_pending_per_source=3)
        async with tcp_server(keys, settings) as (carrier, port):
            other = await started_hello("127.0.0.1", port, local_addr=("127.0.0.2", 0))
            flood = [await started_hello("127.0.0.1", port) for _ in range(5)]
            await asyncio.sleep(0.2)
            assert carrier.pending == 4  # three from the flooding address, one from the other
            await closed_by_server(flood[0][0], within=0.5)  # the oldest of that address
            await closed_by_server(flood[1][0], within=0.5)
            assert not other[0].at_eof()  # another address keeps its place
            for _, writer in [*flood, other]:
                writer.close()

    run(scenario)


def test_unauthenticated_bytes_are_bounded(keys: Keys) -> None:
    async def scenario() -> None:
        settings = replace(TcpConfig(), handshake_timeout=30)
        async with tcp_server(keys, settings) as (carrier, port):
            # a ClientHello dribbled as 1-byte records: sorted out after MAX_RECORDS records
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            record = b"\x16\x03\x01\x00\x01\x01"
            for _ in range(MAX_RECORDS + 1):
                writer.write(record)
            await closed_by_server(reader, within=3)
            writer.close()
            # after TLS, framed messages that never complete a handshake (bad mac1)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_client(["aura/1"]))
            junk = encode([b"\x01\0\0\0" + bytes(144)] * 64)
            for _ in range(MAX_UNAUTHENTICATED_BYTES // len(junk) + 1):
                writer.write(junk)
            await closed_by_server(reader, within=3)
            writer.close()
            await asyncio.sleep(0.1)
            assert carrier.pending == 0

    run(scenario)


def real_client_hello_in_records(count: int) -> bytes:
    """The ClientHello OpenSSL sends for aura/1, its handshake message cut into `count`
    records."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client(["aura/1"]).wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    message = outgoing.read()[5:]
    size = -(-len(message) // count)
    return b"".join(b"\x16\x03\x01" + len(message[i : i + size]).to_bytes(2, "big")
                    + message[i : i + size] for i in range(0, len(message), size))


def test_a_trickled_hello_wakes_the_listener_a_few_times(
        keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that sends its ClientHello a few bytes at a time: the socket wakes the
    # listener only once the bytes that could complete the hello are there (SO_RCVLOWAT).
    # Before, each write cost a wakeup and a turn of the reader, hundreds per connection.
    reads = 0
    read = tcp_carrier._Connection.read

    async def counted(self: tcp_carrier._Connection) -> bytes:
        nonlocal reads
        reads += 1
        return await read(self)

    monkeypatch.setattr(tcp_carrier._Connection, "read", counted)
    hello = real_client_hello_in_records(MAX_RECORDS)

    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (_, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for start in range(0, len(hello), 4):
                writer.write(hello[start : start + 4])
                await writer.drain()
                await asyncio.sleep(0.001)
            async with asyncio.timeout(3):
                answer = await reader.read(5)
            assert answer[:3] == b"\x16\x03\x03"  # a ServerHello: sorted as Aura
            assert len(hello) // 4 > 100
            assert reads <= 10, reads
            writer.close()

    run(scenario)


def test_tiny_records_after_tls_are_read_a_bounded_number_of_times(
        keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that finished TLS and trickles one-byte records of an initiation that never
    # completes: before, each was a wakeup and a read, up to ~3,000 within the 64 KiB and
    # `handshake_timeout`; now the connection is closed after MAX_UNAUTHENTICATED_READS.
    reads = 0
    read = tcp_carrier._Connection.read

    async def counted(self: tcp_carrier._Connection) -> bytes:
        nonlocal reads
        reads += 1
        return await read(self)

    monkeypatch.setattr(tcp_carrier._Connection, "read", counted)
    initiation = encode([b"\x01\0\0\0" + bytes(144)])

    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig()) as (carrier, port):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_client(["aura/1"]))
            with contextlib.suppress(ConnectionError):
                for byte in initiation[:-1]:
                    writer.write(bytes([byte]))  # a TLS record of its own
                    await writer.drain()
                    await asyncio.sleep(0.002)
                    if reader.at_eof():
                        break
            await closed_by_server(reader)
            writer.close()
            assert len(initiation) > 2 * MAX_UNAUTHENTICATED_READS
            assert reads <= MAX_UNAUTHENTICATED_READS + 1, reads
            assert carrier.pending == 0

    run(scenario)


def test_a_connection_that_sends_nothing_is_not_accepted(keys: Keys) -> None:
    # TCP_DEFER_ACCEPT: the kernel keeps a silent connection to itself; before, each cost a
    # task, a timer and a pending slot (evicting the oldest) for `handshake_timeout`.
    async def scenario() -> None:
        async with tcp_server(keys, TcpConfig(max_pending=2)) as (carrier, port):
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.3)
            assert carrier.pending == 0
            reader, writer = await started_hello("127.0.0.1", port)
            async with asyncio.timeout(2):
                while carrier.pending == 0:
                    await asyncio.sleep(0.01)
            assert carrier.pending == 1
            for _, w in [*silent, (reader, writer)]:
                w.close()

    run(scenario)
