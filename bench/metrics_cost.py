"""What metrics cost: the hub's per-event counting against its data path, and one scrape.

    python -m bench.metrics_cost [--batches N] [--peers P]

The data path's only metrics work is in `SessionHub._handle`: one type-byte check per
`Transmit` event. This compares that check, timed alone, with the hub's whole send path for a
batch of 64 packets of 1400 bytes (encrypt + events + carrier), both measured in this run, and
times one scrape over HTTP of a router with P connected peers, with the longest the event
loop stalled meanwhile (the numbers are read on the loop; families and text are made in a thread),
against doing it all on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from aura_common.ipc.frames import PeerKey
from aura_common.service import metrics
from aura_common.state.registry import RegisteredPeer
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import Device, Transmit, generate_private_key, public_key
from aura_common.wireguard.constants import MESSAGE_TRANSPORT
from services.router.sessions import SessionTable

CLIENT = ("192.0.2.1", 40000)
BATCH, SIZE = 64, 1400


class Discard:
    def transmit(self, destination: tuple[str, int], datagrams: Sequence[bytes]) -> None:
        pass


def connected_hub() -> SessionHub:
    server_key, client_key = generate_private_key(), generate_private_key()
    hub = SessionHub("udp", Device(server_key), "/nonexistent")
    hub._apply_peers([PeerKey("alice", public_key(client_key), b"")])
    client = Device(client_key)
    peer = client.add_peer(public_key(server_key), endpoint=("192.0.2.2", 51820))
    sent: list[list[bytes]] = []
    hub.carrier = SimpleNamespace(transmit=lambda destination, datagrams: sent.append(datagrams))
    (initiation,) = client.initiate(peer, time.monotonic())
    assert isinstance(initiation, Transmit)
    hub.received(initiation.datagrams, CLIENT)
    events = client.receive(sent.pop(), ("192.0.2.2", 51820), time.monotonic())
    hub.received([d for e in events if isinstance(e, Transmit) for d in e.datagrams], CLIENT)
    assert hub.session_count == 1
    hub.carrier = Discard()
    return hub


def send_path(batches: int) -> float:
    """Seconds per batch through the hub's send path (encrypt, events, carrier)."""
    hub = connected_hub()
    packet = bytes([0x45]) + bytes(SIZE - 1)
    packets = [packet] * BATCH
    start = time.perf_counter()
    for _ in range(batches):
        hub._from_router([("alice", packets)])
    return (time.perf_counter() - start) / batches


def counting(events: int) -> float:
    """Seconds per Transmit event for the hub's counting check, less an empty loop."""
    sent: dict[int, int] = {}
    event = Transmit(CLIENT, [bytes([MESSAGE_TRANSPORT]) + bytes(SIZE)] * BATCH)
    stream = [event] * events

    def with_check() -> float:
        start = time.perf_counter()
        for item in stream:
            kind = item.datagrams[0][0]
            if kind != MESSAGE_TRANSPORT:
                sent[kind] = sent.get(kind, 0) + 1
        return time.perf_counter() - start

    def empty() -> float:
        start = time.perf_counter()
        for _ in stream:
            pass
        return time.perf_counter() - start

    return max(0.0, min(with_check() for _ in range(5)) - min(empty() for _ in range(5))) / events


def router_collectors(peers: int) -> list[Collector]:
    """The metrics of a router with `peers` connected peers, each with a quota."""
    sessions: SessionTable[str] = SessionTable()
    registry = []
    for n in range(peers):
        name, address = f"peer{n}", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}"
        registry.append(RegisteredPeer(name, n.to_bytes(32, "big"), address_v4=address,
                                     quota_bytes=1 << 30))
        sessions.up(name, "link", "udp", "192.0.2.1:5000", [address], time.time())
    router = SimpleNamespace(registry=registry, sessions=sessions, transports={},
                             usage=SimpleNamespace(get=lambda name: 12345),
                             gate=SimpleNamespace(refused={}))
    return [metrics.RouterCollector(router), metrics.ProcessCollector()]


async def longest_stall(work: Callable[[], Awaitable[object]]) -> float:
    """The longest the event loop went without running a 1 ms ticker while `work` ran."""
    loop = asyncio.get_running_loop()
    worst, running = 0.0, True

    async def ticker() -> None:
        nonlocal worst
        while running:
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    task = loop.create_task(ticker())
    await asyncio.sleep(0.01)
    await work()
    running = False
    await task
    return worst


async def scrape(peers: int) -> tuple[float, float, float, int]:
    """Seconds of one scrape over HTTP; the loop's longest stall during it, and during the
    same text written on the loop (the reference); the size of the text."""
    collectors = router_collectors(peers)
    exporter = metrics.Exporter(collectors)
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    await exporter.start("127.0.0.1", 0)
    size = 0

    async def over_http() -> None:
        nonlocal size
        reader, writer = await asyncio.open_connection(*exporter.address)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        size = len(await reader.read())
        writer.close()

    async def on_the_loop() -> None:
        generate_latest(registry)

    try:
        start = time.perf_counter()
        stall = min([await longest_stall(over_http) for _ in range(3)])
        seconds = (time.perf_counter() - start) / 3
        reference = min([await longest_stall(on_the_loop) for _ in range(3)])
    finally:
        exporter.close()
    return seconds, stall, reference, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--peers", type=int, default=1000)
    args = parser.parse_args()
    per_batch = send_path(args.batches)
    per_event = counting(args.batches * 10)
    print(f"hub send path: {per_batch * 1e6:.1f} us per batch of {BATCH} x {SIZE} B")
    print(f"counting check: {per_event * 1e9:.1f} ns per Transmit event "
          f"= {per_event / per_batch:.5%} of a batch")
    seconds, stall, reference, size = asyncio.run(scrape(args.peers))
    print(f"scrape of a router with {args.peers} connected peers: {seconds * 1e3:.0f} ms, "
          f"{size / 1024:.0f} KiB; longest event-loop stall {stall * 1e3:.1f} ms "
          f"(= {stall / per_batch:.0f} batches), against {reference * 1e3:.1f} ms when the text "
          f"is written on the loop ({stall / reference:.2f}x)")


if __name__ == "__main__":
    main()
