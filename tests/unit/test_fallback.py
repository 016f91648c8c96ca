"""The fallback chain over real loopback sockets: proxy to a decoy, reject, bounds, idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from aura_common.config import FallbackHandler, TcpConfig
from services.tcp.fallback import FallbackChain, Flow, ProxyHandler, RejectHandler

DECOY_ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\ndecoy"


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
            chain = FallbackChain([ProxyHandler(upstream, 5.0)], max_flows=4)
            async with front(chain) as address:
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == DECOY_ANSWER
                # a half-close from the client still lets the answer through
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n", eof=True) == DECOY_ANSWER
                await settled(chain)

    run(scenario)


def test_reject_closes_cleanly() -> None:
    async def scenario() -> None:
        chain = FallbackChain([RejectHandler()], max_flows=4)
        async with front(chain) as address:
            assert await exchange(address, b"\x16\x03\x01 not really tls") == b""

    run(scenario)


def test_unreachable_upstream_passes_the_flow_on() -> None:
    async def scenario() -> None:
        dead = ("127.0.0.1", free_port())
        async with decoy_http() as upstream:
            chain = FallbackChain([ProxyHandler(dead, 5.0), ProxyHandler(upstream, 5.0)],
                                  max_flows=4)
            async with front(chain) as address:
                assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == DECOY_ANSWER
        lone = FallbackChain([ProxyHandler(dead, 5.0)], max_flows=4)
        async with front(lone) as address:
            assert await exchange(address, b"GET / HTTP/1.0\r\n\r\n") == b""

    run(scenario)


def test_from_config_keeps_order_and_bounds() -> None:
    settings = TcpConfig(fallback=(FallbackHandler("proxy", ("127.0.0.1", 80)),
                                   FallbackHandler("reject")), max_pending=7, idle_timeout=3)
    chain = FallbackChain.from_config(settings)
    assert [h.name for h in chain.handlers] == ["proxy to 127.0.0.1:80", "reject"]
    assert chain.max_flows == 7


def test_in_flight_flows_are_bounded_and_idle_ones_closed() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with silent_server() as upstream:
            chain = FallbackChain([ProxyHandler(upstream, 0.6)], max_flows=2)
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
        chain = FallbackChain([ProxyHandler(upstream, 0.5)], max_flows=2)
        async with front(chain) as address:
            # the client never sends again, but the download lasts 1.2 s > idle timeout
            assert await exchange(address, b"x") == b"tick" * 8
        server.close()

    run(scenario)
