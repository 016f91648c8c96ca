"""Load defences: cookie replies under load, mac2 retries, per-source rate limiting."""

from __future__ import annotations

from aura_common.wireguard import HandshakeCompleted
from aura_common.wireguard.constants import COOKIE_SECRET_MAX_AGE
from aura_common.wireguard.cookie import RateLimiter
from tests.unit.test_wireguard_device import CLIENT_ADDR, Pair, drop_reasons, of_type, transmits


def test_flood_gets_a_cookie_reply_and_a_retry_with_mac2_succeeds() -> None:
    pair = Pair(under_load_after=3)
    for step in range(3):  # three handshakes in one second: not yet under load
        now = step * 0.03
        assert [len(d) for d in transmits(
            pair.at_server(pair.client.initiate(pair.to_server, now), now))] == [92]
    now = 0.09
    initiation = pair.client.initiate(pair.to_server, now)
    cookie_reply = pair.at_server(initiation, now)
    assert [len(d) for d in transmits(cookie_reply)] == [64]
    assert transmits(initiation)[0][132:148] == bytes(16)  # no cookie yet, no mac2
    assert pair.at_client(cookie_reply, now) == []  # cookie stored silently

    now = 0.12
    retry = pair.client.initiate(pair.to_server, now)
    assert transmits(retry)[0][132:148] != bytes(16)  # mac2 now set
    response = pair.at_server(retry, now)
    assert [len(d) for d in transmits(response)] == [92]
    confirmation = pair.at_client(response, now)
    assert of_type(confirmation, HandshakeCompleted)
    assert of_type(pair.at_server(confirmation, now), HandshakeCompleted)


def test_mac2_from_another_source_address_earns_a_new_cookie_reply() -> None:
    pair = Pair(under_load_after=0)
    initiation = pair.client.initiate(pair.to_server, 0.0)
    pair.at_client(pair.at_server(initiation, 0.0), 0.0)
    retry = pair.client.initiate(pair.to_server, 0.1)
    moved = pair.at_server(retry, 0.1, source=("192.0.2.99", CLIENT_ADDR[1]))
    assert [len(d) for d in transmits(moved)] == [64]


def test_cookie_replies_for_nobody_or_forged_are_dropped() -> None:
    pair = Pair(under_load_after=0)
    initiation = pair.client.initiate(pair.to_server, 0.0)
    (reply,) = transmits(pair.at_server(initiation, 0.0))
    forged = reply[:40] + bytes([reply[40] ^ 1]) + reply[41:]
    assert drop_reasons(pair.client.receive([forged], CLIENT_ADDR, 0.0)) == [
        "cookie reply did not authenticate"
    ]
    unknown = b"\x03\0\0\0" + b"\xff\xff\xff\xff" + reply[8:]
    assert drop_reasons(pair.client.receive([unknown], CLIENT_ADDR, 0.0)) == [
        "cookie reply for unknown index"
    ]


def test_cookie_expires_with_the_secret() -> None:
    pair = Pair(under_load_after=0)
    pair.at_client(pair.at_server(pair.client.initiate(pair.to_server, 0.0), 0.0), 0.0)
    later = COOKIE_SECRET_MAX_AGE + 1
    stale = pair.at_server(pair.client.initiate(pair.to_server, later), later)
    assert [len(d) for d in transmits(stale)] == [64]  # a fresh cookie is needed


def test_rate_limit_per_source_address() -> None:
    pair = Pair()
    reasons = []
    for _ in range(7):
        reasons += drop_reasons(pair.at_server(pair.client.initiate(pair.to_server, 1.0), 1.0))
    # Five pass the bucket (four of those then hit the per-peer initiation interval).
    assert reasons.count("handshake rate limit") == 2
    assert reasons.count("initiation flood") == 4
    other = pair.at_server(pair.client.initiate(pair.to_server, 1.05), 1.05,
                           source=("192.0.2.77", 1))
    assert [len(d) for d in transmits(other)] == [92]  # another address is unaffected
    refilled = pair.at_server(pair.client.initiate(pair.to_server, 1.2), 1.2)
    assert "handshake rate limit" not in drop_reasons(refilled)


def test_rate_limiter_refills_and_stays_bounded() -> None:
    limiter = RateLimiter(rate=20, burst=5, capacity=4)
    assert [limiter.allow("10.0.0.1", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("10.0.0.1", 0.05)  # one token back after 50 ms
    assert limiter.allow("2001:db8::1", 0.0) and not all(
        limiter.allow("2001:db8::2", 0.0) for _ in range(5)
    )  # one /64 shares a bucket
    for host in ("10.0.0.2", "10.0.0.3"):
        assert limiter.allow(host, 0.0)
    assert not limiter.allow("10.0.0.4", 0.0)  # table full of active sources
    assert limiter.allow("10.0.0.4", 10.0)  # idle entries are pruned to make room
    limiter.prune(20.0)
    assert len(limiter) == 0
