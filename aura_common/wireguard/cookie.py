"""Denial-of-service defences: mac1/mac2, cookie replies, load detection, rate limiting.

WireGuard's design (whitepaper section 5.3; wireguard-go, Linux): every handshake message
needs a valid mac1 (anyone holding our public key can make one). While the device is under
load, it also needs a valid mac2, which proves that its source address receives our cookie
replies; only then is the source rate limited, per IPv4 address and per IPv6 /64. Spoofed
sources therefore earn a cheap cookie reply and leave no state behind.

Beyond WireGuard: one message (its mac1) from one source endpoint gets at most one cookie
reply every few seconds (`CookiePacer`): a message sent again unchanged is a replay.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..addresses import Endpoint, source_ip
from .constants import COOKIE_SECRET_MAX_AGE, LABEL_COOKIE, LABEL_MAC1
from .crypto import blake2s_hash, hchacha20, keyed_mac, xaead_open
from .limits import (
    COOKIE_REFRESH_TIME,
    COOKIE_REPLY_INTERVAL,
    COOKIE_REPLY_TABLE_SIZE,
    HANDSHAKE_BURST,
    HANDSHAKES_PER_SECOND,
    RATE_LIMIT_IDLE,
    RATE_LIMIT_TABLE_SIZE,
    REFUSED_SOURCE_PENALTY,
    REFUSED_SOURCES,
    UNDER_LOAD_STICKY,
)
from .messages import MAC_SIZE, CookieReply


def source_bytes(source: Endpoint) -> bytes:
    """The source address as the cookie binds it: IP bytes, then the port big-endian."""
    return source_ip(source[0]) + source[1].to_bytes(2, "big")


def mac1_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_MAC1, public)


def cookie_key(public: bytes) -> bytes:
    return blake2s_hash(LABEL_COOKIE, public)


class CookieChecker:
    """The receiving side: checks mac1/mac2 against our static key and issues cookies.

    A cookie reply is its own cost under a flood, so it is kept to one AEAD call: the
    XChaCha20 nonce is a random prefix, drawn with each secret, and a counter. The subkey
    HChaCha20 derives from our cookie key and that prefix is then the same for every reply
    of one secret, and computed once; the counter keeps every nonce unique.
    """

    def __init__(self, local_public: bytes, rng: Callable[[int], bytes]) -> None:
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._rng = rng
        self._secret = rng(32)
        self._secret_born: float | None = None
        self._nonce_prefix = b""
        self._reply_cipher: ChaCha20Poly1305 | None = None
        self._replies = 0

    def mac1_valid(self, message: bytes, mac1_offset: int) -> bool:
        expected = keyed_mac(self._mac1_key, message[:mac1_offset])
        return hmac.compare_digest(expected, message[mac1_offset : mac1_offset + MAC_SIZE])

    def mac2_valid(self, message: bytes, mac1_offset: int, source: Endpoint, now: float) -> bool:
        """Whether `message` carries a valid mac2 for `source` (a cookie we issued to it)."""
        if self._secret_born is None or now - self._secret_born > COOKIE_SECRET_MAX_AGE:
            self._new_secret(now)  # every cookie issued so far is void
            return False
        cookie = keyed_mac(self._secret, source_bytes(source))
        mac2_offset = mac1_offset + MAC_SIZE
        return hmac.compare_digest(keyed_mac(cookie, message[:mac2_offset]),
                                   message[mac2_offset : mac2_offset + MAC_SIZE])

    def cookie_reply(self, message: bytes, mac1_offset: int, receiver: int,
                     source: Endpoint) -> bytes:
        """A cookie reply to `message` (call `mac2_valid` first: it keeps the secret fresh).

        The reply carries the cookie for `source`, encrypted with the message's mac1 as
        associated data, so only the holder of our public key who sent it can read it.
        """
        assert self._reply_cipher is not None, "mac2_valid() draws the first secret"
        cookie = keyed_mac(self._secret, source_bytes(source))
        counter = self._replies.to_bytes(8, "little")
        self._replies += 1
        mac1 = message[mac1_offset : mac1_offset + MAC_SIZE]
        encrypted = self._reply_cipher.encrypt(bytes(4) + counter, cookie, mac1)
        return CookieReply(receiver, self._nonce_prefix + counter, encrypted).pack()

    def _new_secret(self, now: float) -> None:
        self._secret = self._rng(32)
        self._secret_born = now
        self._nonce_prefix = self._rng(16)
        self._reply_cipher = ChaCha20Poly1305(hchacha20(self._cookie_key, self._nonce_prefix))
        self._replies = 0


class CookiePacer:
    """At most one cookie reply per message (its mac1) from one source endpoint every
    `interval`.

    A cookie reply is sealed with the mac1 of the message it answers as additional data, so
    only the sender of that very message can open it. Paced per endpoint alone, anyone able to
    send from a client's address and port (no need to see its traffic) could take each
    interval's one reply with a message of its own and leave the client's unanswered, its
    next try again without mac2, for as long as it kept that up. So each message is answered
    once, as in WireGuard, and only the same message again (a replay: a real initiator makes
    a new one for every try) is paced. A flood of distinct messages from one endpoint costs
    as much as one from many: a reply each (64 bytes to its 148, no amplification), bounded
    by what a read passes on. Bounded: at most `capacity` messages and as many endpoints, the
    one answered longest ago makes room (it may then be answered again early).
    """

    def __init__(self, interval: float = COOKIE_REPLY_INTERVAL,
                 capacity: int = COOKIE_REPLY_TABLE_SIZE) -> None:
        self._interval, self._capacity = interval, capacity
        self._replied: dict[tuple[Endpoint, bytes], float] = {}  # in the order answered
        self._endpoints: dict[Endpoint, float] = {}  # the last reply to each, in that order

    def allow(self, source: Endpoint, mac1: bytes, now: float) -> bool:
        if not _paced(self._replied, (source, mac1), now, self._interval, self._capacity):
            return False
        self._endpoints.pop(source, None)
        _paced(self._endpoints, source, now, 0.0, self._capacity)
        return True

    def answered_recently(self, source: Endpoint, now: float) -> bool:
        """Whether `source` got a cookie reply less than the interval ago (a hint for whom to
        shed first when a read holds more than can be screened, not a refusal)."""
        last = self._endpoints.get(source)
        return last is not None and now - last < self._interval

    def __len__(self) -> int:
        return len(self._replied)


def _paced(table: dict[Any, float], key: object, now: float, interval: float,
           capacity: int) -> bool:
    """Record `key` at `now` unless it was less than `interval` ago; bounded to `capacity`
    keys, the one recorded longest ago making room."""
    last = table.pop(key, None)
    if last is not None and now - last < interval:
        table[key] = last
        return False
    if len(table) >= capacity:
        del table[next(iter(table))]
    table[key] = now
    return True


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


class Load:
    """Whether the device is under load: a backlog of handshake messages, sticky for a second."""

    def __init__(self, backlog_threshold: int) -> None:
        self._threshold = backlog_threshold
        self._until = float("-inf")

    def under_load(self, backlog: int, now: float) -> bool:
        """`backlog`: handshake messages received and not yet handled, this one included."""
        if backlog >= self._threshold:
            self._until = now + UNDER_LOAD_STICKY
            return True
        return now < self._until

    def overflowed(self, now: float) -> None:
        """Handshake messages were dropped before they could queue: the backlog is past any
        mark, so this is load as much as a long queue is."""
        self._until = now + UNDER_LOAD_STICKY

    def lasts(self, now: float) -> bool:
        """Whether the device is still under load from the backlog last seen (no new look)."""
        return now < self._until


# Host texts -> `RateLimiter.key`: a flood's few thousand sources are parsed once each, not
# per message. Bounded: emptied when full.
SOURCE_KEYS_KEPT = 8192
_source_keys: dict[str, bytes] = {}


class RateLimiter:
    """A token bucket per source (IPv4 address, IPv6 /64), for sources a mac2 has proven.

    Bounded: at most `capacity` sources, in least-recently-seen order. A source idle for
    RATE_LIMIT_IDLE has a full bucket again and is forgotten; when the table is full the
    least recently seen one makes room (it comes back with a full bucket, as it would have
    after a short pause). Only sources that receive our cookie replies get here, so an
    attacker needs a real address per entry, and each entry earns him at most one burst.
    """

    def __init__(self, rate: float = HANDSHAKES_PER_SECOND, burst: int = HANDSHAKE_BURST,
                 capacity: int = RATE_LIMIT_TABLE_SIZE) -> None:
        self._rate, self._burst, self._capacity = rate, float(burst), capacity
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()  # (tokens, seen)

    @staticmethod
    def key(host: str) -> bytes:
        """The source `host` is counted as: its IPv4 address, or its IPv6 /64. Kept per host
        text, since a carrier asks for every handshake message of a flood it reads."""
        key = _source_keys.get(host)
        if key is None:
            packed = source_ip(host)
            key = packed if len(packed) == 4 else packed[:8]
            if len(_source_keys) >= SOURCE_KEYS_KEPT:
                _source_keys.clear()
            _source_keys[host] = key
        return key

    def allow(self, host: str, now: float) -> bool:
        key = self.key(host)
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            self.prune(now)
            if len(buckets) >= self._capacity:
                buckets.popitem(last=False)
            tokens = self._burst
        else:
            tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
        allowed = tokens >= 1.0
        buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def tokens(self, key: bytes, now: float) -> int:
        """The whole tokens the source `key` (see `key`) has now: how many of its handshakes
        `allow` would pass (a look only: nothing is taken or stored)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return int(self._burst)
        return int(min(self._burst, bucket[0] + (now - bucket[1]) * self._rate))

    def prune(self, now: float) -> None:
        """Forget sources idle for RATE_LIMIT_IDLE: their bucket is full again anyway."""
        buckets = self._buckets
        while buckets:
            key, (_, seen) = next(iter(buckets.items()))
            if now - seen < RATE_LIMIT_IDLE:
                break
            del buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class RefusedSources:
    """Sources (keyed as `RateLimiter.key`) whose proven initiation the authority refused,
    each held for `penalty` seconds from its last refusal.

    Bounded: at most `capacity` sources; the one refused longest ago is forgotten first, so
    an attacker with more proven sources than that sees each held for less.
    """

    def __init__(self, penalty: float = REFUSED_SOURCE_PENALTY,
                 capacity: int = REFUSED_SOURCES) -> None:
        self._penalty, self._capacity = penalty, capacity
        self._refused: dict[bytes, float] = {}  # key -> last refused, oldest first

    def refused(self, key: bytes, now: float) -> None:
        refused = self._refused
        refused.pop(key, None)
        refused[key] = now  # re-inserted last: dicts keep insertion order
        while refused:
            oldest, at = next(iter(refused.items()))
            if len(refused) <= self._capacity and now - at < self._penalty:
                break
            del refused[oldest]

    def held(self, key: bytes, now: float) -> bool:
        at = self._refused.get(key)
        return at is not None and now - at < self._penalty

    def __len__(self) -> int:
        return len(self._refused)
