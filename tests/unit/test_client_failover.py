"""The client's failover, run whole (daemon, paths, WireGuard, data path) without root: on the
in-memory TUN and loopback carriers of `services.client.fakes`, and on an event loop whose
clock jumps to the next timer when nothing else is ready, so minutes of handshake timeouts,
liveness limits and probe intervals pass in well under a second."""

from __future__ import annotations

import asyncio
import ipaddress
import selectors
import struct
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import pytest

from aura_common.config import ClientConfig, encode_key
from aura_common.errors import AuraError
from aura_common.ipc.frames import ClientState
from aura_common.wireguard import generate_private_key, public_key
from services.client.daemon import ClientDaemon
from services.client.dns import SystemDns
from services.client.fakes import LoopbackHub, MemoryResolver, MemoryTun
from services.client.path import DEFAULT_LIVENESS, LIVENESS_GRACE
from services.client.schedule import JITTER, PROBE_INTERVAL

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

CONFIG_MTU = 1420
QUIC_MTU = 1280
# A round of probes is due at most this long after the last one (or the move).
PROBE_DUE = PROBE_INTERVAL * (1 + JITTER)
# A client that spins without ever waiting stops the clock; this much real time ends the test.
REAL_TIME_LIMIT = 60.0


class _JumpingSelector(selectors.DefaultSelector):
    """Waits no real time: when nothing is ready and no worker thread is busy, the loop's
    clock moves to the moment the loop wanted to wake up."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if time.monotonic() > self.loop.real_deadline:
            raise RuntimeError(f"over {REAL_TIME_LIMIT:.0f} s of real time: the loop never idles")
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if self.loop.busy_threads or timeout is None:
            return super().select(timeout)  # a thread's result wakes the loop for real
        self.loop.now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(_JumpingSelector(self))
        self.now = 1000.0
        self.busy_threads = 0
        self.real_deadline = time.monotonic() + REAL_TIME_LIMIT

    def time(self) -> float:
        return self.now

    def run_in_executor(self, executor: Executor | None, func: Callable[[*_Ts], _T],
                        *args: *_Ts) -> asyncio.Future[_T]:
        future = super().run_in_executor(executor, func, *args)
        self.busy_threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: asyncio.Future[Any] | ThreadFuture[Any]) -> None:
        self.busy_threads -= 1


@dataclass
class Client:
    daemon: ClientDaemon
    hub: LoopbackHub
    tuns: list[MemoryTun]
    resolver: MemoryResolver

    @property
    def tun(self) -> MemoryTun:
        return self.tuns[-1]

    def status(self) -> ClientState:
        return self.daemon.status()


def ipv4_packet(source: str, destination: str, payload: bytes) -> bytes:
    """An IPv4/UDP packet with a valid header checksum."""
    total = 20 + 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0,
                         bytes(map(int, source.split("."))),
                         bytes(map(int, destination.split("."))))
    words = sum(struct.unpack("!10H", header))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    header = header[:10] + struct.pack("!H", ~words & 0xFFFF) + header[12:]
    return header + struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload


async def until(predicate: Callable[[], object], within: float, what: str) -> None:
    """Wait (in loop time) until `predicate` holds, at most `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


async def carries_traffic(client: Client, transport: str) -> None:
    """A packet from the TUN reaches the server over `transport`, and its answer the TUN."""
    loop = asyncio.get_running_loop()
    question = ipv4_packet("10.77.0.2", "10.77.0.1", f"to {loop.time()}".encode())
    server = client.hub.servers[transport]
    client.tun.inject(question)
    await until(lambda: question in server.received, 5, f"packet over {transport}")
    answer = ipv4_packet("10.77.0.1", "10.77.0.2", f"from {loop.time()}".encode())
    server.send([answer])
    async with asyncio.timeout(5):
        assert await client.tun.delivered() == answer


async def up_over(client: Client, transport: str, within: float) -> None:
    await until(lambda: client.status().state == "up"
                and client.status().transport == transport, within, f"up over {transport}")
    await carries_traffic(client, transport)


def run_client(tmp_path: Path, scenario: Callable[[Client], Awaitable[None]],
               blocked: tuple[str, ...] = ()) -> None:
    server_key, client_key = generate_private_key(), generate_private_key()
    config = ClientConfig.from_mapping({
        "version": 1,
        "name": "alice",
        "interface": {"private_key": encode_key(client_key), "addresses": ["10.77.0.2/32"],
                      "mtu": CONFIG_MTU},
        "server": {"public_key": encode_key(public_key(server_key)), "host": "127.0.0.1",
                   "ca_public_key": encode_key(bytes(32))},
        "runtime_dir": str(tmp_path / "run"),
        "state_file": str(tmp_path / "state.json"),
    })

    async def main() -> None:
        hub = LoopbackHub(server_key, public_key(client_key), tunnel_mtus={"quic": QUIC_MTU})
        hub.block(*blocked)
        resolver = MemoryResolver()
        tuns: list[MemoryTun] = []

        def open_tun(name: str, mtu: int) -> MemoryTun:
            tuns.append(MemoryTun(name, mtu))
            return tuns[-1]

        daemon = ClientDaemon(config, SystemDns(str(tmp_path / "dns.json"), "memory",
                                                {"memory": resolver}),
                              open_tun=open_tun, carriers=hub.carriers())
        running = asyncio.ensure_future(daemon.run())
        try:
            await until(lambda: tuns or running.done(), 5, "tunnel device opened")
            await scenario(Client(daemon, hub, tuns, resolver))
        finally:
            daemon.stop.set()
            await running
        assert tuns[-1].closed

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(main())


def test_up_over_udp_with_the_config_mtu(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        await up_over(client, "udp", within=1)
        status = client.status()
        assert status.mtu == CONFIG_MTU and client.tun.is_up
        assert status.endpoint == "127.0.0.1:8443"
        assert status.tx_packets == 1 and status.rx_packets == 1
        # the server's address stays out of the tunnel routes
        server = ipaddress.ip_network("127.0.0.1/32")
        routes = client.tun.plan.routes
        assert routes and not any(route.overlaps(server) for route in routes)

    run_client(tmp_path, scenario)


def test_udp_blocked_falls_back_to_quic_at_its_mtu(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        # UDP gets its two handshake attempts (5 s), then QUIC
        await up_over(client, "quic", within=6)
        assert client.status().mtu == QUIC_MTU
        assert "udp 127.0.0.1:8443: no handshake response" in str(client.status().last_error)
        assert client.hub.servers["udp"].handshakes == 0

    run_client(tmp_path, scenario, blocked=("udp",))


def test_udp_and_quic_blocked_tcp_then_back_to_quic_then_to_udp(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        # UDP's handshake times out (5 s), QUIC's connection never opens (5 s): TCP
        await up_over(client, "tcp", within=11)
        assert client.status().mtu == CONFIG_MTU

        client.hub.unblock("quic")
        # the next round probes UDP (5 s, still blocked), then QUIC, which takes over
        await up_over(client, "quic", within=PROBE_DUE + 6)
        assert client.status().mtu == QUIC_MTU
        assert not client.hub.servers["tcp"].connections  # the old path was let go

        client.hub.unblock("udp")
        await up_over(client, "udp", within=PROBE_DUE + 1)
        assert client.status().mtu == CONFIG_MTU
        assert not client.hub.servers["quic"].connections

    run_client(tmp_path, scenario, blocked=("udp", "quic"))


def test_a_stopped_transport_breaks_the_path_and_the_client_comes_back(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        await up_over(client, "udp", within=1)
        client.hub.stop("udp")
        # the next packet bounces (ICMP port unreachable): the path breaks at once, and as it
        # was young, the client backs off (1 s) before starting over at UDP, refused again
        client.tun.inject(ipv4_packet("10.77.0.2", "10.77.0.1", b"bounces"))
        await up_over(client, "quic", within=2)
        assert "Connection refused" in str(client.status().last_error)
        client.hub.start("udp")
        await up_over(client, "udp", within=PROBE_DUE + 1)

    run_client(tmp_path, scenario)


def test_a_silent_server_breaks_the_path_after_the_liveness_limit(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        await up_over(client, "udp", within=1)
        client.hub.block("udp")
        loop = asyncio.get_running_loop()
        silent_since = loop.time()
        await until(lambda: client.status().state != "up", 60, "path broke")
        assert loop.time() - silent_since >= DEFAULT_LIVENESS + LIVENESS_GRACE - 1
        assert "nothing from the server for" in str(client.status().last_error)
        # a path that lived this long starts over at UDP (5 s, still silent), then QUIC
        await up_over(client, "quic", within=6)

    run_client(tmp_path, scenario)


def test_a_failing_tun_stops_the_client(tmp_path: Path) -> None:
    async def scenario(client: Client) -> None:
        await up_over(client, "udp", within=1)
        client.tun.fail()
        await until(lambda: client.tun.closed, 1, "client stopped")

    with pytest.raises(AuraError, match="reading aura-alice failed"):
        run_client(tmp_path, scenario)
