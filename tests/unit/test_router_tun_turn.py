"""How much of the TUN one turn of the router reads: the kernel answers every packet the
router writes (an echo request to the server's own address) at once, into a queue of
QUEUE_PACKETS that drops what it cannot hold, and one turn of a transport's frames can write
thousands of small packets. The TUN here is the real `Tun` on one end of a socket pair that
keeps packet boundaries, as the device does."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aura_common.ipc.frames import Packets
from aura_common.netio.offload import VNET_HDR_LEN
from aura_common.netio.tun import QUEUE_PACKETS, Tun
from aura_common.state.registry import RegisteredPeer
from tests.unit.router_fakes import FakeTransport, claim, ipv4, new_router, router_config

PLAIN = bytes(VNET_HDR_LEN)  # no offload: one plain packet per read


@contextmanager
def tun_pair() -> Iterator[tuple[Tun, socket.socket]]:
    """A Tun reading what the returned socket writes, one packet per write."""
    device, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
    device.setblocking(False)
    with device, kernel:
        yield Tun(device.fileno(), "aura-test"), kernel


def test_a_read_batch_stops_at_its_byte_budget_or_its_read_count() -> None:
    with tun_pair() as (tun, kernel):
        for _ in range(10):
            kernel.send(PLAIN + ipv4("10.77.0.1", "10.77.0.2", bytes(1000)))
        first = tun.read_batch(limit=100, max_bytes=3000)
        assert len(first) == 3  # the read that reached the budget is the last
        assert len(tun.read_batch(limit=4)) == 4
        assert len(tun.read_batch(limit=100)) == 3  # what was left; then it stops


def test_one_turn_reads_a_full_queue_of_small_packets(tmp_path: Path) -> None:
    config = router_config(tmp_path, RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3"))

    async def scenario() -> None:
        router = new_router(config)
        udp = FakeTransport()
        router.transports[udp] = "udp"  # type: ignore[index]
        claim(router, udp, "bob")
        with tun_pair() as (tun, kernel):
            router.tun = tun
            replies = [ipv4("10.77.0.1", "10.77.0.3", i.to_bytes(2, "big") * 20)
                       for i in range(QUEUE_PACKETS)]
            for reply in replies:
                kernel.send(PLAIN + reply)
            udp.frames.clear()
            router._tun_readable()
            router.tun = None
        sent = [p for f in udp.frames if isinstance(f, Packets) for _, ps in f.batches
                for p in ps]
        assert sent == replies

    asyncio.run(scenario())

