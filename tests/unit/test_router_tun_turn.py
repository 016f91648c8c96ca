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

import pytest

from aura_common.ipc.frames import Packets
from aura_common.netio.offload import VNET_HDR_LEN
from aura_common.netio.tun import QUEUE_PACKETS, Tun
from aura_common.state.registry import RegisteredPeer
from services.router import main as router_main
from tests.unit.router_fakes import FakeTransport, claim, ipv4, new_router, router_config

PLAIN = bytes(VNET_HDR_LEN)  # no offload: one plain packet per read
TURN_BYTES = 32 << 10  # a few turns' backlog fits the flow queue's smallest limit


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



def test_a_ping_reply_overtakes_the_backlog_of_a_bulk_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What one read takes from the TUN waits in the router's flow queue; each turn of the
    loop dispatches TURN_BYTES of it, and a packet of a flow with nothing queued goes first."""
    monkeypatch.setattr(router_main, "TURN_BYTES", TURN_BYTES)
    config = router_config(tmp_path, RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3"))

    async def scenario() -> None:
        router = new_router(config)
        udp = FakeTransport()
        router.transports[udp] = "udp"  # type: ignore[index]
        claim(router, udp, "bob")
        with tun_pair() as (tun, kernel):
            router.tun = tun
            download = [ipv4("10.77.0.1", "10.77.0.3", b"\x14\x51\x9c\x40" + bytes(1400))
                        for _ in range(3 * TURN_BYTES // 1424)]
            for packet in download:
                kernel.send(PLAIN + packet)
            udp.frames.clear()
            router._tun_readable()
            first_turn = len(sent_packets(udp))
            assert 0 < first_turn * 1424 <= TURN_BYTES + 1424
            reply = ipv4("10.77.0.1", "10.77.0.3", b"\x00\x00\xab\xcd" + bytes(60))
            kernel.send(PLAIN + reply)
            router._tun_readable()
            await asyncio.sleep(0)  # the next turn
            assert sent_packets(udp)[first_turn] == reply
            await asyncio.sleep(0.01)  # the following turns dispatch the rest
            router.tun = None
        assert sent_packets(udp) == [*download[:first_turn], reply, *download[first_turn:]]

    asyncio.run(scenario())


def test_a_link_with_a_backlog_unread_gets_nothing_more_and_holds_back_no_other_link(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a transport leaves LINK_BYTES unread in its link, the router keeps that link's
    packets in the flow queue, where a ping reply read later still overtakes them; another
    transport's link is served meanwhile."""
    monkeypatch.setattr(router_main, "TURN_BYTES", TURN_BYTES)
    config = router_config(tmp_path, RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3"),
                           RegisteredPeer("carol", b"c" * 32, address_v4="10.77.0.4"))

    async def scenario() -> None:
        router = new_router(config)
        udp, tcp = FakeTransport(), FakeTransport(pid=4343)
        router.transports[udp] = "udp"  # type: ignore[index]
        router.transports[tcp] = "tcp"  # type: ignore[index]
        claim(router, udp, "bob")
        claim(router, tcp, "carol")
        with tun_pair() as (tun, kernel):
            router.tun = tun
            to_bob = [ipv4("10.77.0.1", "10.77.0.3", b"\x14\x51\x9c\x40" + bytes(1400))
                      for _ in range(2 * TURN_BYTES // 1424)]
            to_carol = [ipv4("10.77.0.1", "10.77.0.4", b"\x14\x51\x9c\x41" + bytes(1400))
                        for _ in range(2 * TURN_BYTES // 1424)]
            for packet in to_bob + to_carol:
                kernel.send(PLAIN + packet)
            udp.frames.clear()
            tcp.frames.clear()
            router._tun_readable()
            first_turn = len(sent_packets(udp))
            assert 0 < first_turn < len(to_bob)
            udp.unread = router_main.LINK_BYTES
            reply = ipv4("10.77.0.1", "10.77.0.3", b"\x00\x00\xab\xcd" + bytes(60))
            kernel.send(PLAIN + reply)
            router._tun_readable()
            await asyncio.sleep(router_main.LINK_POLL * 4)
            assert len(sent_packets(udp)) == first_turn
            assert sent_packets(tcp) == to_carol
            udp.unread = 0
            router._from_transport(udp, [])  # type: ignore[arg-type]  # its transport at work
            assert sent_packets(udp)[first_turn] == reply
            await asyncio.sleep(router_main.LINK_POLL * 4)
            router.tun = None
        assert sent_packets(udp) == [*to_bob[:first_turn], reply, *to_bob[first_turn:]]

    asyncio.run(scenario())


def test_a_link_that_stays_full_is_looked_at_less_and_less_often(
        tmp_path: Path) -> None:
    """A transport that stopped reading costs the router a few wakeups a second, not one
    every LINK_POLL."""
    config = router_config(tmp_path, RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3"))
    looks = 0

    async def scenario() -> None:
        router = new_router(config)
        udp = FakeTransport()
        router.transports[udp] = "udp"  # type: ignore[index]
        claim(router, udp, "bob")

        def unread() -> int:
            nonlocal looks
            looks += 1
            return router_main.LINK_BYTES

        udp.unread_by_peer = unread  # type: ignore[method-assign]
        with tun_pair() as (tun, kernel):
            router.tun = tun
            kernel.send(PLAIN + ipv4("10.77.0.1", "10.77.0.3", bytes(1400)))
            udp.frames.clear()
            router._tun_readable()
            await asyncio.sleep(0.2)  # 400 looks at one every LINK_POLL
            router.tun = None
        assert sent_packets(udp) == []

    asyncio.run(scenario())
    assert 2 < looks <= 12


def sent_packets(transport: FakeTransport) -> list[bytes]:
    return [p for f in transport.frames if isinstance(f, Packets) for _, ps in f.batches
            for p in ps]
