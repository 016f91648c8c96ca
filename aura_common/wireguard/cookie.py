"""Denial-of-service defences: mac1/mac2, cookie replies, load detection, rate limiting."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from .constants import (
    COOKIE_REFRESH_TIME,
    COOKIE_SECRET_MAX_AGE,
    HANDSHAKE_BURST,
    HANDSHAKES_PER_SECOND,
    LABEL_COOKIE,
    LABEL_MAC1,
    RATE_LIMIT_TABLE_SIZE,
    UNDER_LOAD_STICKY,
)
from .crypto import blake2s_hash, keyed_mac, xaead_open, xaead_seal
from .messages import MAC_SIZE, CookieReply

Source = tuple[str, int]


def source_bytes(source: Source) -> bytes:
    """The source address as the cookie binds it: IP bytes, then the port big-endian."""
    return ipaddress.ip_address(source[0]).packed + source[1].to_bytes(2, "big")


def mac1_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_COOKIE, public)


class CookieChecker:
    """The receiving side: checks mac1/mac2 against our static key and issues cookies."""

    def __init__(self, local_public: bytes, rng: Callable[[int], bytes]) -> None:
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._rng = rng
        self._secret = rng(32)
        self._secret_born: float | None = None

    def mac1_valid(self, message: bytes, mac1_offset: int) -> bool:
        expected = keyed_mac(self._mac1_key, message[:mac1_offset])
        return hmac.compare_digest(expected, message[mac1_offset : mac1_offset + MAC_SIZE])

    def _cookie(self, source: Source) -> bytes:
        return keyed_mac(self._secret, source_bytes(source))

    def mac2_valid(self, message: bytes, mac1_offset: int, source: Source, now: float) -> bool:
        if self._secret_born is None or now - self._secret_born > COOKIE_SECRET_MAX_AGE:
            return False
        mac2_offset = mac1_offset + MAC_SIZE
        expected = keyed_mac(self._cookie(source), message[:mac2_offset])
        return hmac.compare_digest(expected, message[mac2_offset : mac2_offset + MAC_SIZE])

    def reply(self, message: bytes, mac1_offset: int, receiver: int, source: Source,
              now: float) -> bytes:
        """A cookie reply to `message`, encrypted with its mac1 as associated data."""
        if self._secret_born is None or now - self._secret_born > COOKIE_SECRET_MAX_AGE:
            self._secret = self._rng(32)
            self._secret_born = now
        nonce = self._rng(24)
        mac1 = message[mac1_offset : mac1_offset + MAC_SIZE]
        encrypted = xaead_seal(self._cookie_key, nonce, self._cookie(source), mac1)
        return CookieReply(receiver, nonce, encrypted).pack()


class CookieJar:
    """The sending side, one per peer: adds mac1 (and mac2 while a cookie is fresh)."""

    def __init__(self, remote_public: bytes) -> None:
        self._mac1_key = mac1_key(remote_public)
        self._cookie_key = cookie_key(remote_public)
        self._cookie: bytes | None = None
        self._cookie_received = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, message: bytes, now: float) -> bytes:
        """`message` is the full message with zero macs; returns it with both macs set."""
        mac1_offset = len(message) - 2 * MAC_SIZE
        body = message[:mac1_offset]
        mac1 = keyed_mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie is None or now - self._cookie_received >= COOKIE_REFRESH_TIME:
            return body + mac1 + bytes(MAC_SIZE)
        return body + mac1 + keyed_mac(self._cookie, body + mac1)

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Stores the cookie if the reply answers our last message; False otherwise."""
        if self._last_mac1 is None:
            return False
        try:
            cookie = xaead_open(self._cookie_key, reply.nonce, reply.encrypted_cookie,
                                self._last_mac1)
        except InvalidTag:
            return False
        self._cookie, self._cookie_received = cookie, now
        self._last_mac1 = None
        return True

    def forget(self) -> None:
        self._cookie = None
        self._last_mac1 = None


class LoadMeter:
    """Counts handshake messages per second; "under load" is sticky for a second."""

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._second_started = float("-inf")
        self._count = 0
        self._under_load_until = float("-inf")

    def record(self, now: float) -> bool:
        """Counts one handshake message; returns whether the device is under load."""
        if now - self._second_started >= 1.0:
            self._second_started, self._count = now, 0
        self._count += 1
        if self._count > self._threshold:
            self._under_load_until = now + UNDER_LOAD_STICKY
        return now < self._under_load_until


class RateLimiter:
    """Token bucket per source address (IPv6 by /64), bounded in size."""

    def __init__(self, rate: float = HANDSHAKES_PER_SECOND, burst: int = HANDSHAKE_BURST,
                 capacity: int = RATE_LIMIT_TABLE_SIZE) -> None:
        self._rate, self._burst, self._capacity = rate, burst, capacity
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key -> (tokens, updated)

    @staticmethod
    def _key(host: str) -> bytes:
        packed = ipaddress.ip_address(host).packed
        return packed if len(packed) == 4 else packed[:8]

    def allow(self, host: str, now: float) -> bool:
        key = self._key(host)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._capacity:
                self.prune(now)
                if len(self._buckets) >= self._capacity:
                    return False
            tokens = float(self._burst)
        else:
            tokens = min(float(self._burst), bucket[0] + (now - bucket[1]) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def prune(self, now: float) -> None:
        """Forget sources whose bucket has refilled: they behave as new ones anyway."""
        refill_time = self._burst / self._rate
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items()
            if now - bucket[1] < refill_time
        }

    def __len__(self) -> int:
        return len(self._buckets)
