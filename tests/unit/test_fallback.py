"""The fallback chain over real loopback sockets: proxy to a decoy, reject, bounds, idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from aura_common.config import FallbackHandler, TcpConfig
from services.tcp.fallback import (
    READ_BURST,
    READS_PER_SECOND,
    FallbackChain,
    Flow,
    ProxyHandler,
    ReadPacer,
    RejectHandler,
)

DECOY_ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\ndecoy"
PACER = ReadPacer(READS_PER_SECOND, READ_BURST)


@asynccontextmanager
async def decoy_http() -> AsyncIterator[tuple[str, int]]:
    """A tiny HTTP server: answers one request, then closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(DECOY_ANSWER)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, int]]:
    """Accepts and never says anything."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def front(chain: FallbackChain) -> AsyncIterator[tuple[str, int]]:
    """Stands in for aura-tcp: reads the first bytes, then hands the flow to the chain."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        initial = await reader.read(4096)
        host, port = writer.get_extra_info("peername")[:2]
        await chain.handle(Flow(reader, writer, initial, f"{host}:{port}", "test"))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()


async def exchange(address: tuple[str, int], request: bytes, *, eof: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    if eof:
        writer.write_eof()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    return answer


async def closed_by_server(reader: asyncio.StreamReader) -> None:
    with suppress(ConnectionResetError):
        assert await reader.read() == b""


async def settled(chain: FallbackChain) -> None:
    async with asyncio.timeout(3):
        while chain.active:
            await asyncio.sleep(0.01)


def run(test: Callable[[], object]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def test_proxy_forwards_the_bytes_already_read_and_returns_the_answer() -> None:
    async def scenario() -> None:
        async with decoy_http() as upstream:
            chain = FallbackChain([ProxyHandler(upstream, 5.0, PACER)],
                                  max_flows=4, max_flows_per_source=4)
            async with front(chain) as address:
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == DECOY_ANSWER
                # a half-close from the client still lets the answer through
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n", eof=True) == DECOY_ANSWER
                await settled(chain)

    run(scenario)


def test_reject_closes_cleanly() -> None:
    async def scenario() -> None:
        chain = FallbackChain([RejectHandler()], max_flows=4, max_flows_per_source=4)
        async with front(chain) as address:
            assert await exchange(address, b"\x16\x03\x01 not really tls") == b""

    run(scenario)


def test_unreachable_upstream_passes_the_flow_on() -> None:
    async def scenario() -> None:
        dead = ("127.0.0.1", free_port())
        async with decoy_http() as upstream:
            chain = FallbackChain(
                [ProxyHandler(dead, 5.0, PACER), ProxyHandler(upstream, 5.0, PACER)],
                max_flows=4, max_flows_per_source=4)
            async with front(chain) as address:
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == DECOY_ANSWER
        lone = FallbackChain([ProxyHandler(dead, 5.0, PACER)], max_flows=4, max_flows_per_source=4)
        async with front(lone) as address:
            assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == b""

    run(scenario)


def test_from_config_keeps_order_and_bounds() -> None:
    settings = TcpConfig(fallback=(FallbackHandler("proxy", ("127.0.0.1", 80)),
                                   FallbackHandler("reject")), max_pending=7, idle_timeout=3)
    chain = FallbackChain.from_config(settings)
    assert [h.name for h in chain.handlers] == ["proxy to 127.0.0.1:80", "reject"]
    assert chain.max_flows == 7
    assert chain.max_flows_per_source == settings.max_pending_per_source


def test_in_flight_flows_are_bounded_and_idle_ones_closed() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with silent_server() as upstream:
            chain = FallbackChain([ProxyHandler(upstream, 0.6, PACER)], max_flows=2,
                                  max_flows_per_source=2)
            async with front(chain) as address:
                held = [await asyncio.open_connection(*address) for _ in range(2)]
                for _, writer in held:
                    writer.write(b"hello")
                while chain.active < 2:
                    await asyncio.sleep(0.01)
                # over the bound: dropped at once, the held flows are untouched
                reader, writer = await asyncio.open_connection(*address)
                writer.write(b"third")
                started = loop.time()
                async with asyncio.timeout(2):
                    await closed_by_server(reader)
                assert loop.time() - started < 0.5
                assert chain.active == 2
                # idle flows end after the idle timeout
                for reader, writer in held:
                    async with asyncio.timeout(3):
                        await closed_by_server(reader)
                    writer.close()
                await settled(chain)

    run(scenario)


def test_traffic_in_one_direction_keeps_the_flow_alive() -> None:
    async def scenario() -> None:
        async def stream_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for _ in range(8):
                writer.write(b"tick")
                await writer.drain()
                await asyncio.sleep(0.15)
            writer.close()

        server = await asyncio.start_server(stream_slowly, "127.0.0.1", 0)
        upstream = server.sockets[0].getsockname()[:2]
        chain = FallbackChain([ProxyHandler(upstream, 0.5, PACER)], max_flows=2,
                              max_flows_per_source=2)
        async with front(chain) as address:
            # the client never sends again, but the download lasts 1.2 s > idle timeout
            assert await exchange(address, b"x") == b"tick" * 8
        server.close()

    run(scenario)


def test_flows_are_bounded_per_source_address() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with silent_server() as upstream:
            chain = FallbackChain([ProxyHandler(upstream, 1.0, PACER)], max_flows=10,
                                  max_flows_per_source=2)
            async with front(chain) as address:
                held = [await asyncio.open_connection(*address) for _ in range(2)]
                other = await asyncio.open_connection(*address, local_addr=("127.0.0.2", 0))
                for _, writer in [*held, other]:
                    writer.write(b"hello")
                while chain.active < 3:
                    await asyncio.sleep(0.01)
                # a third from the same address: dropped at once; the other address is not
                reader, writer = await asyncio.open_connection(*address)
                writer.write(b"third")
                started = loop.time()
                async with asyncio.timeout(2):
                    await closed_by_server(reader)
                assert loop.time() - started < 0.5
                assert chain.active == 3
                for _, writer in [*held, other]:
                    writer.transport.abort()
                await settled(chain)  # the upstream side ends at the idle timeout

    run(scenario)


def test_a_trickling_flow_is_read_at_the_pacer_rate() -> None:
    # A client sending a byte every 2 ms, never idle: each byte was a wakeup, a read and a
    # write to the upstream, for as long as it liked. The pacer holds all flows' reads to its
    # rate; the bytes gather in the kernel meanwhile and all arrive.
    chunks: list[bytes] = []

    async def count_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            chunks.append(data)
        writer.write(str(sum(map(len, chunks))).encode())
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(count_chunks, "127.0.0.1", 0)
        upstream = server.sockets[0].getsockname()[:2]
        chain = FallbackChain([ProxyHandler(upstream, 5.0, ReadPacer(20, 2))], max_flows=2,
                              max_flows_per_source=2)
        async with front(chain) as address:
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"x")
            started = loop.time()
            for _ in range(400):
                writer.write(b"y")
                await writer.drain()
                await asyncio.sleep(0.002)
            writer.write_eof()
            async with asyncio.timeout(5):
                answer = await reader.read()
            elapsed = loop.time() - started
            writer.close()
        server.close()
        assert answer == b"401"
        assert b"".join(chunks) == b"x" + b"y" * 400
        assert len(chunks) <= 20 * elapsed + 2 + 3, (len(chunks), elapsed)

    run(scenario)
