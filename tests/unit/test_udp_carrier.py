"""aura-udp's carrier: what one read of the socket passes on to the WireGuard core."""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Iterator

from aura_common.netio.codel import CoDel
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import Device, Transmit, generate_private_key, public_key
from aura_common.wireguard.cookie import CookiePacer
from aura_common.wireguard.limits import HANDSHAKE_BURST, UNDER_LOAD_STICKY
from aura_lab.flood import junk_initiation
from services.udp.main import (
    FRESH_RESERVE,
    HANDSHAKES_PER_READ,
    LIKELY_DROPPED_BURST,
    LIKELY_DROPPED_PER_SECOND,
    UdpCarrier,
)

# What one read keeps of one source's handshake messages: the places kept for new sources
# are not for more of one that was just read.
ONE_SOURCE_PER_READ = HANDSHAKES_PER_READ - FRESH_RESERVE


@contextlib.contextmanager
def carrier_on_loopback(device: Device) -> Iterator[tuple[UdpCarrier, socket.socket]]:
    """The carrier of a hub with no router, on a loopback socket, and a flooder's socket; the
    test calls the carrier's reader itself."""
    hub = SessionHub("udp", device, "/nonexistent/router.sock")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, flooder:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        carrier = UdpCarrier(server, hub)
        # No queue management: CoDel has tests of its own, and here a stall of a loaded machine
        # (a datagram waiting over its 5 ms target in two reads 100 ms apart) would drop one of
        # the datagrams the test counts.
        carrier.aqm = CoDel(target=math.inf)
        yield carrier, flooder


def test_a_read_passes_on_its_share_of_handshakes_and_all_data_then_is_under_load() -> None:
    key = generate_private_key()
    with carrier_on_loopback(Device(key, mtu=1420)) as (carrier, flooder):
        hub, server = carrier.hub, carrier.sock
        extra = 52  # with those kept, 100 handshake messages and 10 data datagrams
        junk = junk_initiation(public_key(key))  # one message, replayed
        for n in range(ONE_SOURCE_PER_READ + extra):
            flooder.sendto(junk, server.getsockname())
            if n % 10 == 0:  # data for no session among them: never shed, each reaches the core
                flooder.sendto(b"\x04" + bytes(47), server.getsockname())
        time.sleep(0.05)

        async def one_read() -> None:
            carrier._readable()

        asyncio.run(one_read())
    dropped = hub.counters.dropped
    assert dropped["handshake_queue_full"] == extra  # shed by their first byte
    assert dropped["unknown_session"] == 10
    # A read that sheds puts the device under load, so what it kept is screened under load:
    # one message, one cookie reply; its replays are dropped as answered.
    assert hub.counters.sent[3] == 1
    assert dropped["cookie_already_sent"] == ONE_SOURCE_PER_READ - 1
    assert hub.device.handshakes_pending == 0


def test_a_new_client_is_read_through_a_flood_from_sources_just_answered() -> None:
    key = generate_private_key()
    # Under load from the start: every message needs a cookie.
    with carrier_on_loopback(Device(key, under_load_after=0)) as (carrier, flooder), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        hub, server = carrier.hub, carrier.sock
        client.settimeout(2)

        async def read() -> None:
            time.sleep(0.05)
            carrier._readable()

        junk = junk_initiation(public_key(key))  # one message, replayed
        flooder.sendto(junk, server.getsockname())
        asyncio.run(read())  # answered with a cookie: the flooder's endpoint is paced now
        flood = 2 * HANDSHAKES_PER_READ
        for _ in range(flood):
            flooder.sendto(junk, server.getsockname())
        client.sendto(junk_initiation(public_key(key)), server.getsockname())  # read last
        asyncio.run(read())
        assert len(client.recv(100)) == 64  # its cookie reply
    dropped = hub.counters.dropped
    # Of the flood, a burst's worth was screened, the rest shed unread.
    assert dropped["cookie_already_sent"] == LIKELY_DROPPED_BURST
    assert dropped["handshake_queue_full"] == flood - LIKELY_DROPPED_BURST


def test_what_the_core_would_drop_anyway_is_screened_at_a_bounded_rate_over_many_reads(
) -> None:
    key = generate_private_key()
    with carrier_on_loopback(Device(key, under_load_after=0)) as (carrier, flooder):
        hub, server = carrier.hub, carrier.sock
        reads, per_read = 20, 20

        junk = junk_initiation(public_key(key))  # one message, replayed

        async def flood() -> float:
            flooder.sendto(junk, server.getsockname())
            await asyncio.sleep(0.01)
            carrier._readable()  # answered: the endpoint is paced from now on
            started = time.monotonic()
            for _ in range(reads):  # frequent reads, as data brings them
                for _ in range(per_read):
                    flooder.sendto(junk, server.getsockname())
                await asyncio.sleep(0.01)
                carrier._readable()
            return time.monotonic() - started

        elapsed = asyncio.run(flood())
    screened = hub.counters.dropped["cookie_already_sent"]
    assert screened <= LIKELY_DROPPED_BURST + LIKELY_DROPPED_PER_SECOND * elapsed + 1
    shed = hub.counters.dropped["handshake_queue_full"]
    assert screened + shed + carrier.aqm.dropped == reads * per_read  # CoDel: they waited 10 ms


def test_handshakes_shed_from_endpoints_just_answered_keep_the_device_under_load() -> None:
    key = generate_private_key()
    with carrier_on_loopback(Device(key)) as (carrier, flooder):
        hub, server = carrier.hub, carrier.sock

        async def read() -> None:  # at once: loopback queues each datagram as it is sent,
            carrier._readable()  # and one waiting long would meet CoDel

        for _ in range(ONE_SOURCE_PER_READ + 1):  # one more than a read screens: load
            flooder.sendto(junk_initiation(public_key(key)), server.getsockname())
        asyncio.run(read())
        assert hub.counters.sent[3] == ONE_SOURCE_PER_READ  # a cookie reply each
        time.sleep(UNDER_LOAD_STICKY + 0.1)  # that load is over, the endpoint still paced
        for _ in range(3 * LIKELY_DROPPED_BURST):  # a burst screened, the rest shed: load
            flooder.sendto(junk_initiation(public_key(key)), server.getsockname())
        asyncio.run(read())
    # Screened under load: answered with cookies, none queued for a key exchange.
    assert hub.counters.sent[3] == ONE_SOURCE_PER_READ + LIKELY_DROPPED_BURST
    assert hub.device.handshakes_pending == 0


def test_a_new_source_is_read_through_a_flood_of_sources_queued_lately() -> None:
    """A flood whose every source is let through (proven, within its rate limit) is not
    shed first; a read holding more of it than the carrier screens still keeps a new
    client's message, though it came last."""
    key = generate_private_key()
    with carrier_on_loopback(Device(key)) as (carrier, flooder), \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        hub, server = carrier.hub, carrier.sock
        client.bind(("127.0.0.2", 0))  # another source address than the flood's 127.0.0.1
        client.settimeout(2)

        async def read() -> None:
            carrier._readable()

        flooder.sendto(junk_initiation(public_key(key)), server.getsockname())
        asyncio.run(read())  # queued (not under load): the flood's source was queued lately
        assert not hub.device.goes_first(("127.0.0.1", 1), time.monotonic())
        flood = 2 * HANDSHAKES_PER_READ
        for _ in range(flood):
            flooder.sendto(junk_initiation(public_key(key)), server.getsockname())
        client.sendto(junk_initiation(public_key(key)), server.getsockname())  # read last
        asyncio.run(read())
        # The read shed, so what it kept was screened under load: a cookie reply each.
        assert len(client.recv(100)) == 64
    assert hub.counters.sent[3] == ONE_SOURCE_PER_READ + 1
    assert hub.counters.dropped["handshake_queue_full"] == flood - ONE_SOURCE_PER_READ


def test_a_read_keeps_no_more_of_a_proven_source_than_its_rate_limit_would_pass() -> None:
    """Under load, initiations with a valid mac2 from one source: one read keeps the few its
    tokens would let through (and the small share of what is likely dropped), not its share
    of the places, each mac-checked only for the rate limit to drop it."""
    key = generate_private_key()
    stranger = Device(generate_private_key())  # the server knows no such peer
    with carrier_on_loopback(Device(key, under_load_after=0)) as (carrier, flooder):
        hub, server = carrier.hub, carrier.sock
        # Its endpoint is not shed first as one just sent a cookie reply for long.
        hub.device._screen._pacer = CookiePacer(interval=0.05)
        to_server = stranger.add_peer(public_key(key), endpoint=server.getsockname())
        flooder.settimeout(2)

        def initiation() -> bytes:
            [event] = stranger.initiate(to_server, time.monotonic())
            assert isinstance(event, Transmit)
            [message] = event.datagrams
            return message

        async def read() -> None:
            carrier._readable()

        flooder.sendto(initiation(), server.getsockname())
        asyncio.run(read())  # a cookie reply: the flooder can prove its address from now on
        stranger.receive([flooder.recv(100)], server.getsockname(), time.monotonic())
        time.sleep(0.1)
        flood = ONE_SOURCE_PER_READ - 8
        for _ in range(flood):
            flooder.sendto(initiation(), server.getsockname())
        asyncio.run(read())
    dropped = hub.counters.dropped
    screened = dropped["rate_limited"] + HANDSHAKE_BURST  # a token each, then the limit
    assert screened <= HANDSHAKE_BURST + LIKELY_DROPPED_BURST
    assert dropped["handshake_queue_full"] == flood - screened  # shed unread
