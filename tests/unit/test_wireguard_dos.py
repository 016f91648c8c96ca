"""The WireGuard DoS design in the core: load, cookies, and the per-source rate limit."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import tracemalloc

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aura_common.addresses import source_address
from aura_common.transport.hub import SessionHub, format_endpoint
from aura_common.wireguard import (
    Device,
    Event,
    HandshakeRequested,
    Received,
    Transmit,
    cookie,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.constants import REKEY_TIMEOUT
from aura_common.wireguard.cookie import (
    SOURCE_KEYS_KEPT,
    CookiePacer,
    Load,
    RateLimiter,
    RefusedSources,
    source_bytes,
)
from aura_common.wireguard.limits import (
    COOKIE_REPLY_INTERVAL,
    COOKIE_REPLY_TABLE_SIZE,
    HANDSHAKE_BURST,
    HANDSHAKE_QUEUE_SIZE,
    HANDSHAKE_WORK_BATCH,
    HANDSHAKES_PER_SECOND,
    RATE_LIMIT_IDLE,
    RATE_LIMIT_TABLE_SIZE,
    REFUSED_SOURCE_PENALTY,
    UNDER_LOAD_BACKLOG,
    UNDER_LOAD_STICKY,
)
from aura_lab.flood import junk_initiation
from tests.unit.wireguard_pair import (
    CLIENT_ADDR,
    SERVER_ADDR,
    Pair,
    Relayed,
    drop_reasons,
    of_type,
    transmits,
)


def sizes(events: list) -> list[int]:
    return [len(d) for d in transmits(events)]


def receive_all(device: Device, datagrams: list[bytes], source: tuple[str, int], now: float
                ) -> list[Event]:
    """`receive`, then the rest of the handshake queue, as a transport's event loop does."""
    events = device.receive(datagrams, source, now)
    while device.handshakes_pending:
        events += device.process_handshakes(now)
    return events


# -- the device ---------------------------------------------------------------------------
def test_a_flood_from_one_ipv4_address_spares_other_ipv4_clients() -> None:
    # A dual-stack socket reports IPv4 sources as IPv4-mapped IPv6 addresses.
    pair = Pair()
    server_public = public_key(pair.server_key)
    attacker, client = ("::ffff:192.0.2.66", 5555), ("::ffff:198.51.100.2", 40000)
    answers = []
    for step in range(200):  # two seconds of 100 junk initiations per second
        now = step / 100
        pair.server.receive([junk_initiation(server_public)], attacker, now)
        if step >= 100 and step % 10 == 0:  # meanwhile another client connects, ten times
            response = pair.at_server(pair.client.initiate(pair.to_server, now), now,
                                      source=client)
            answers.append(sizes(response))
    assert answers == [[92]] * 10


def test_below_the_load_mark_no_source_is_rate_limited() -> None:
    pair = Pair()
    answers = [sizes(pair.at_server(pair.client.initiate(pair.to_server, step * 0.03),
                                    step * 0.03)) for step in range(60)]
    assert answers == [[92]] * 60  # 33 per second, far beyond the under-load rate limit


def spoofed(messages: list[bytes]) -> list[tuple[list[bytes], tuple[str, int]]]:
    """Each message from a source of its own, as a flood of spoofed addresses sends them."""
    return [([message], (f"::ffff:10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1000))
            for n, message in enumerate(messages)]


def test_a_backlog_at_the_mark_means_cookies_for_a_second() -> None:
    pair = Pair()
    server_public = public_key(pair.server_key)
    below = [junk_initiation(server_public) for _ in range(UNDER_LOAD_BACKLOG - 1)]
    assert sizes(receive_all(pair.server, below, CLIENT_ADDR, 0.0)) == []  # handled, no reply
    # Read at once: the first ones fill the queue to the mark, the rest meet it.
    at_mark = [junk_initiation(server_public) for _ in range(UNDER_LOAD_BACKLOG + 10)]
    assert sizes(pair.server.receive_batches(spoofed(at_mark), 1.0)) == [64] * 11
    while pair.server.handshakes_pending:
        pair.server.process_handshakes(1.0)
    sticky = 1.0 + UNDER_LOAD_STICKY - 0.01
    assert sizes(pair.at_server(pair.client.initiate(pair.to_server, sticky), sticky)) == [64]
    later = 1.0 + UNDER_LOAD_STICKY + 0.01
    assert sizes(pair.at_server(pair.client.initiate(pair.to_server, later), later)) == [92]


def test_under_load_junk_costs_a_cookie_reply_at_once_and_data_behind_it_goes_through() -> None:
    pair = Pair()
    pair.connect()
    server_public = public_key(pair.server_key)
    flood = spoofed([junk_initiation(server_public) for _ in range(4 * HANDSHAKE_QUEUE_SIZE)])
    data = transmits(pair.client.send(pair.to_server, [b"\x45" + bytes(19)], 0.5))
    before = pair.to_client.rx_bytes
    events = pair.server.receive_batches([*flood, (data, CLIENT_ADDR)], 0.5)
    assert pair.to_client.rx_bytes - before == len(data[0])  # data behind the flood got through
    # Below the mark they queue for the key exchange; from it on, each is answered at once
    # with a cookie reply and never queued: the queue stays at the mark.
    queued = UNDER_LOAD_BACKLOG - 1
    assert sizes(events) == [64] * (len(flood) - queued)
    assert pair.server.handshakes_pending == queued - HANDSHAKE_WORK_BATCH


def test_the_data_of_a_read_is_handled_before_its_handshake_messages() -> None:
    pair = Pair()
    pair.connect()
    pair.server.handshakes_shed(0.5)  # under load: each junk initiation earns a cookie reply
    server_public = public_key(pair.server_key)
    packet = b"\x45\x00\x00\x14" + bytes(16)  # an IPv4 header, 20 bytes long
    data = transmits(pair.client.send(pair.to_server, [packet], 0.5))
    flood = spoofed([junk_initiation(server_public) for _ in range(3)])
    events = pair.server.receive_batches([*flood, (data, CLIENT_ADDR)], 0.5)
    kinds = [type(event).__name__ for event in events if isinstance(event, Transmit | Received)]
    assert kinds == ["Received", "Transmit", "Transmit", "Transmit"]


def test_under_load_one_message_gets_one_cookie_reply_per_interval() -> None:
    pair = Pair(under_load_after=0)
    server_public = public_key(pair.server_key)
    attacker = ("::ffff:192.0.2.66", 5555)
    junk = junk_initiation(server_public)
    replies = []
    for step in range(100):  # ten seconds of one message replayed, ten per second
        now = step / 10
        events = pair.server.receive([junk], attacker, now)
        replies += [now for _ in sizes(events)]
    assert replies == [0.0, COOKIE_REPLY_INTERVAL, 2 * COOKIE_REPLY_INTERVAL]
    # Meanwhile another endpoint, even at the same address, gets its own reply at once.
    same_address = ("::ffff:192.0.2.66", 5556)
    assert sizes(pair.server.receive([junk], same_address, 9.95)) == [64]
    # A real client retries after REKEY_TIMEOUT, more than the interval: each try is answered.
    assert COOKIE_REPLY_INTERVAL < REKEY_TIMEOUT
    for attempt in range(3):
        now = 20.0 + attempt * REKEY_TIMEOUT
        assert sizes(pair.at_server(pair.client.initiate(pair.to_server, now), now)) == [64]


def test_a_spoofer_holding_a_clients_endpoint_does_not_keep_its_cookie_from_it() -> None:
    """Someone who can send from the client's address and port, without seeing its traffic,
    sends junk from there all the time: the client's own initiation is still answered, with
    a cookie reply it can open, and its next try, carrying mac2, gets through."""
    pair = Pair(under_load_after=0)
    server_public = public_key(pair.server_key)
    for step in range(20):  # ten per second, from just before the client's try
        now = 9.0 + step / 10
        assert sizes(pair.server.receive([junk_initiation(server_public)], CLIENT_ADDR,
                                         now)) == [64]  # a reply the client cannot open
    reply = pair.at_server(pair.client.initiate(pair.to_server, 10.0), 10.05)
    assert sizes(reply) == [64]
    pair.at_client(reply, 10.05)  # the client takes the cookie
    retry = pair.client.initiate(pair.to_server, 10.0 + REKEY_TIMEOUT)
    assert sizes(pair.at_server(retry, 10.0 + REKEY_TIMEOUT)) == [92]  # the response


def test_shed_first_names_endpoints_just_answered_and_sources_out_of_tokens() -> None:
    pair = Pair(under_load_after=0)
    server_public = public_key(pair.server_key)
    attacker = ("::ffff:192.0.2.66", 5555)
    assert not pair.server.shed_first(attacker, 0.0)
    pair.server.receive([junk_initiation(server_public)], attacker, 0.0)  # a cookie reply
    assert pair.server.shed_first(attacker, 0.1)
    assert not pair.server.shed_first(attacker, COOKIE_REPLY_INTERVAL)
    # A client proves its endpoint, then spends its burst there at once.
    proven = ("::ffff:192.0.2.70", 7000)
    pair.at_client(pair.at_server(pair.client.initiate(pair.to_server, 10.0), 10.0,
                                  source=proven), 10.0)
    now = 10.0 + COOKIE_REPLY_INTERVAL
    assert not pair.server.shed_first(proven, now)
    retries = [transmits(pair.client.initiate(pair.to_server, now))[0]
               for _ in range(HANDSHAKE_BURST + 1)]
    assert "handshake rate limit" in drop_reasons(pair.server.receive(retries, proven, now))
    assert pair.server.shed_first(proven, now)
    assert not pair.server.shed_first(proven, now + 1 / HANDSHAKES_PER_SECOND)  # a token back


def test_cookie_pacer_is_bounded_and_forgets_the_longest_answered_first() -> None:
    pacer = CookiePacer(interval=4.0, capacity=3)
    mac1, other = bytes(16), bytes([1]) * 16
    assert [pacer.allow(("10.0.0.1", 1), mac1, 0.0),
            pacer.allow(("10.0.0.1", 1), mac1, 1.0)] == [True, False]
    assert pacer.allow(("10.0.0.1", 1), other, 1.0)  # another message from there
    assert pacer.answered_recently(("10.0.0.1", 1), 4.5)
    for n in (2, 3):
        assert pacer.allow((f"10.0.0.{n}", 1), mac1, 1.0)
    assert len(pacer) == 3
    assert pacer.allow(("10.0.0.1", 1), mac1, 1.5)  # forgotten to make room: answered again
    assert not pacer.allow(("10.0.0.3", 1), mac1, 1.5)


def test_the_handshake_queue_is_bounded_and_work_per_read_too() -> None:
    pair = Pair(under_load_after=2 * HANDSHAKE_QUEUE_SIZE)  # never under load: all queue
    server_public = public_key(pair.server_key)
    flood = [junk_initiation(server_public) for _ in range(HANDSHAKE_QUEUE_SIZE + 10)]
    events = pair.server.receive(flood, CLIENT_ADDR, 0.5)
    reasons = drop_reasons(events)
    assert reasons.count("handshake queue full") == 10
    assert reasons.count("handshake rejected: authentication failed") == HANDSHAKE_WORK_BATCH
    assert pair.server.handshakes_pending == HANDSHAKE_QUEUE_SIZE - HANDSHAKE_WORK_BATCH
    pair.server.tick(0.55)  # timers work it too
    assert pair.server.handshakes_pending == HANDSHAKE_QUEUE_SIZE - 2 * HANDSHAKE_WORK_BATCH


def test_spoofed_sources_get_cookies_and_leave_no_state() -> None:
    pair = Pair(under_load_after=0)  # always under load
    server_public = public_key(pair.server_key)
    batches = [([junk_initiation(server_public)], (f"2001:db8:{n:x}::1", 1000 + n))
               for n in range(300)]
    events = pair.server.receive_batches(batches, 0.0)
    while pair.server.handshakes_pending:
        events += pair.server.process_handshakes(0.0)
    assert [(e.destination, len(e.datagrams[0])) for e in events if isinstance(e, Transmit)] == [
        (source, 64) for _, source in batches]
    assert len(pair.server._screen.rate_limiter) == 0  # no mac2, no rate-limiter entry


def test_under_load_a_proven_source_is_limited_per_address_and_others_pass() -> None:
    pair = Pair(under_load_after=0)
    attacker = ("::ffff:192.0.2.66", 5555)
    # The client earns a cookie from the attacker's address, then floods with valid mac2.
    pair.at_client(pair.at_server(pair.client.initiate(pair.to_server, 0.0), 0.0,
                                  source=attacker), 0.0)
    reasons = []
    for step in range(1, 51):  # one second at 50 initiations per second
        now = step * 0.02
        reasons += drop_reasons(pair.at_server(pair.client.initiate(pair.to_server, now), now,
                                               source=attacker))
    limited = reasons.count("handshake rate limit")
    assert 50 - limited <= HANDSHAKE_BURST + HANDSHAKES_PER_SECOND
    assert limited >= 50 - HANDSHAKE_BURST - HANDSHAKES_PER_SECOND - 1
    # Another client from another IPv4 address is not touched by that bucket.
    key = generate_private_key()
    other = Device(key)
    to_server = other.add_peer(public_key(pair.server_key), endpoint=SERVER_ADDR)
    pair.server.add_peer(public_key(key))
    elsewhere = ("::ffff:192.0.2.67", 5555)

    def at_server(events: list, now: float) -> list:
        return pair.server.receive(transmits(events), elsewhere, now)

    other.receive(transmits(at_server(other.initiate(to_server, 1.0), 1.0)), SERVER_ADDR, 1.0)
    assert sizes(at_server(other.initiate(to_server, 1.05), 1.05)) == [92]


def test_under_load_a_proven_source_whose_initiation_fails_is_held_for_the_penalty() -> None:
    """A source that proved its address and then sent an initiation that did not authenticate
    gets no key exchange for REFUSED_SOURCE_PENALTY, though within its rate limit; and a
    carrier sheds its messages first meanwhile. Other sources are not touched."""
    pair = Pair(under_load_after=0)
    stranger = Device(generate_private_key())  # a key the server does not know
    to_server = stranger.add_peer(public_key(pair.server_key), endpoint=SERVER_ADDR)
    attacker = ("2001:db8:a000:1::1", 5555)

    def initiate(now: float) -> list[str]:
        events = pair.server.receive(transmits(stranger.initiate(to_server, now)), attacker, now)
        stranger.receive(transmits(events), SERVER_ADDR, now)  # takes a cookie reply
        return drop_reasons(events)

    assert initiate(0.0) == []  # a cookie reply: no mac2 yet
    assert initiate(1.0) == ["handshake rejected: unknown peer"]  # proven, one key exchange
    assert pair.server.shed_first(("2001:db8:a000:1::2", 1), 1.5)  # the same /64
    for now in (1.5, 2.0, 1.0 + REFUSED_SOURCE_PENALTY - 0.1):
        assert initiate(now) == ["handshake rate limit: one from there was refused"]
    assert initiate(1.0 + REFUSED_SOURCE_PENALTY) == ["handshake rejected: unknown peer"]
    pair.at_client(pair.at_server(pair.client.initiate(pair.to_server, 2.0), 2.0), 2.0)
    assert sizes(pair.at_server(pair.client.initiate(pair.to_server, 3.0), 3.0)) == [92]


def test_a_relay_holds_a_source_only_for_a_proven_initiation_that_failed_itself() -> None:
    def tries_after_a_refusal(proven: bool, unauthenticated: bool) -> list[str]:
        """What becomes of a client's next tries under load, after the authority refused its
        initiation (proven by a mac2 or not) as unauthenticated or as a replay."""
        pair = Relayed(under_load_after=10_000)  # under load only when told of shed messages

        def initiate(now: float) -> list[Event]:
            events = pair.relay.receive(transmits(pair.client.initiate(pair.to_server, now)),
                                        CLIENT_ADDR, now)
            pair.client.receive(transmits(events), SERVER_ADDR, now)  # takes a cookie reply
            return events

        if proven:
            pair.relay.handshakes_shed(0.0)
            initiate(0.0)  # a cookie reply
        [request] = of_type(initiate(0.5), HandshakeRequested)
        pair.relay.refuse_handshake(request.local_index, "authentication failed",
                                    unauthenticated, 0.5)
        pair.relay.handshakes_shed(1.0)  # under load from now on
        events = initiate(1.0) + initiate(1.5)  # (without a cookie yet, the first earns one)
        return drop_reasons(events) + ["asked"] * len(of_type(events, HandshakeRequested))

    held = "handshake rate limit: one from there was refused"
    assert tries_after_a_refusal(True, True) == [held, held]
    # A replay (or no room): not the source's fault.
    assert tries_after_a_refusal(True, False) == ["asked", "asked"]
    # Without load no mac2 proved the source: anyone could have sent it from there.
    assert tries_after_a_refusal(False, True) == ["asked"]


def test_refused_sources_are_bounded_and_forgotten_after_the_penalty() -> None:
    refused = RefusedSources(penalty=30.0, capacity=3)
    for n in range(4):
        refused.refused(bytes([n]), float(n))
    assert len(refused) == 3
    assert [refused.held(bytes([n]), 4.0) for n in range(4)] == [False, True, True, True]
    assert not refused.held(bytes([1]), 31.0)
    refused.refused(bytes([9]), 40.0)  # the rest are past their penalty: forgotten
    assert len(refused) == 1


def test_handshakes_shed_unread_mean_load_and_the_read_they_came_in_is_screened_under_it(
) -> None:
    pair = Pair()
    server_public = public_key(pair.server_key)
    kept = [junk_initiation(server_public) for _ in range(10)]  # far below the mark
    pair.server.handshakes_shed(1.0)  # the carrier dropped the rest of the read unread
    assert sizes(pair.server.receive_batches(spoofed(kept), 1.0)) == [64] * len(kept)
    assert pair.server.handshakes_pending == 0
    sticky = 1.0 + UNDER_LOAD_STICKY - 0.01
    assert sizes(pair.at_server(pair.client.initiate(pair.to_server, sticky), sticky)) == [64]
    later = 1.0 + UNDER_LOAD_STICKY + 0.01
    assert sizes(pair.at_server(pair.client.initiate(pair.to_server, later), later)) == [92]


# -- the load mark --------------------------------------------------------------------------
def test_load_is_sticky_for_a_second_after_the_backlog_last_reached_the_mark() -> None:
    load = Load(4)
    assert not load.under_load(3, 0.0)
    assert load.under_load(4, 1.0)
    assert load.under_load(1, 1.0 + UNDER_LOAD_STICKY - 0.001)
    assert load.under_load(5, 1.5)  # renewed
    assert load.under_load(0, 1.5 + UNDER_LOAD_STICKY - 0.001)
    assert not load.under_load(0, 1.5 + UNDER_LOAD_STICKY)


# -- the rate limiter -----------------------------------------------------------------------
def test_rate_limiter_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=20, burst=5, capacity=8)
    assert [limiter.allow("10.0.0.1", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow("10.0.0.1", 0.04)
    assert limiter.allow("10.0.0.1", 0.05)  # one token back after 50 ms
    assert limiter.allow("10.0.0.2", 0.05)  # another address has its own bucket


def test_source_keys_kept_for_a_flood_are_bounded() -> None:
    for n in range(SOURCE_KEYS_KEPT + 10):
        assert RateLimiter.key(f"2001:db8:{n:x}::1") == bytes.fromhex(f"20010db8{n:04x}0000")
    assert 0 < len(cookie._source_keys) <= SOURCE_KEYS_KEPT


def test_rate_limiter_keys_ipv4_by_address_and_ipv6_by_64() -> None:
    key = RateLimiter.key
    assert key("::ffff:192.0.2.1") == key("192.0.2.1") == bytes([192, 0, 2, 1])
    assert key("::ffff:192.0.2.1") != key("::ffff:192.0.2.2")
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") != key("2001:db8:1:3::1")
    assert key("fe80::1%eth0") == key("fe80::2")


@given(st.integers(0, 2**32 - 1))
def test_every_ipv4_mapped_address_is_its_ipv4_address(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    mapped = f"::ffff:{v4}"
    assert source_address(mapped) == v4
    assert RateLimiter.key(mapped) == v4.packed
    assert source_bytes((mapped, 7)) == source_bytes((str(v4), 7)) == v4.packed + b"\0\7"


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**64 - 1))
def test_ipv6_sources_in_one_64_share_a_key(value: int, host: int) -> None:
    address = ipaddress.IPv6Address(value)
    neighbour = ipaddress.IPv6Address((value >> 64 << 64) | host)
    # An IPv4-mapped address is IPv4 (keyed by its own address), whatever /64 it sits in.
    assume(address.ipv4_mapped is None and neighbour.ipv4_mapped is None)
    assert RateLimiter.key(str(address)) == RateLimiter.key(str(neighbour)) == address.packed[:8]


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_rate_limiter_never_allows_more_than_burst_plus_rate(gaps: list[float]) -> None:
    limiter = RateLimiter(rate=20, burst=5, capacity=8)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow("192.0.2.1", now)
    assert allowed <= 5 + 20 * now + 1e-9


def test_rate_limiter_forgets_idle_sources_and_evicts_the_least_recent_when_full() -> None:
    limiter = RateLimiter(rate=20, burst=5, capacity=3)
    for _ in range(5):
        limiter.allow("10.0.0.1", 0.0)
    assert not limiter.allow("10.0.0.1", 0.0)
    limiter.allow("10.0.0.2", 0.1)
    limiter.allow("10.0.0.3", 0.2)
    limiter.allow("10.0.0.4", 0.3)  # full: 10.0.0.1, the least recently seen, goes
    assert len(limiter) == 3
    assert [limiter.allow("10.0.0.1", 0.3) for _ in range(6)] == [True] * 5 + [False]
    limiter.prune(0.2 + RATE_LIMIT_IDLE - 0.01)
    assert len(limiter) == 3
    limiter.prune(0.2 + RATE_LIMIT_IDLE)  # 10.0.0.3, last seen at 0.2
    assert len(limiter) == 2
    limiter.prune(0.3 + RATE_LIMIT_IDLE)
    assert len(limiter) == 0


def test_rate_limiter_table_is_bounded_in_entries_and_bytes() -> None:
    limiter = RateLimiter()
    cookie._source_keys.clear()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3 * RATE_LIMIT_TABLE_SIZE):  # distinct /64s, all within one second
            limiter.allow(str(ipaddress.IPv6Address((0x20010DB8 << 96) | (n << 64))), n / 1e4)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(limiter) == RATE_LIMIT_TABLE_SIZE
    # About 1.2 MiB at most, and the source keys kept (about half a MiB when full).
    assert held < RATE_LIMIT_TABLE_SIZE * 320 + SOURCE_KEYS_KEPT * 80, held


def test_cookie_pacer_is_bounded_in_entries_and_bytes() -> None:
    pacer = CookiePacer()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3 * COOKIE_REPLY_TABLE_SIZE):  # distinct IPv6 endpoints in one second
            address = str(ipaddress.IPv6Address((0x20010DB8 << 96) | (n << 64) | 1))
            pacer.allow((address, 40000 + n % 1000), n.to_bytes(16, "big"), n / 1e5)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(pacer) == COOKIE_REPLY_TABLE_SIZE
    # Messages and endpoints: about 5 MiB at most.
    assert held < COOKIE_REPLY_TABLE_SIZE * 640, held


def test_the_hub_logs_one_line_per_kind_of_drop_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = SessionHub("udp", Device(generate_private_key()), "/nonexistent/router.sock")
    with caplog.at_level(logging.DEBUG, logger="aura_common.transport.hub"):
        for _ in range(1000):
            hub.received([b"\x09" * 40], ("192.0.2.1", 1))
    lines = [r for r in caplog.records if "dropped from" in r.getMessage()]
    assert len(lines) == 1
    assert hub.counters.dropped["malformed"] == 1000


def test_endpoints_show_ipv4_seen_through_dual_stack_as_ipv4() -> None:
    assert format_endpoint(("::ffff:192.0.2.1", 5)) == "192.0.2.1:5"
    assert format_endpoint(("192.0.2.1", 5)) == "192.0.2.1:5"
    assert format_endpoint(("2001:db8::1", 5)) == "[2001:db8::1]:5"


def test_the_hub_works_the_handshake_queue_between_reads() -> None:
    server_key = generate_private_key()
    hub = SessionHub("udp", Device(server_key), "/nonexistent/router.sock")
    flood = [junk_initiation(public_key(server_key)) for _ in range(3 * HANDSHAKE_WORK_BATCH)]

    async def read_and_yield() -> list[int]:
        hub.received_batches([(flood, ("192.0.2.1", 1))])
        waiting = [hub.device.handshakes_pending]
        await asyncio.sleep(0)  # one turn of the loop: one more batch of handshakes
        waiting.append(hub.device.handshakes_pending)
        await asyncio.sleep(0.01)
        return [*waiting, hub.device.handshakes_pending]

    batch = HANDSHAKE_WORK_BATCH
    assert asyncio.run(read_and_yield()) == [2 * batch, batch, 0]
    assert hub.counters.dropped["bad_handshake"] == 3 * batch  # each was handled
