"""Handshake messages screened before their key exchange, and the queue of those that pass.

A key exchange is the dear part of a handshake, so a flood must not reach it cheaply: every
initiation and response has its mac1 checked (a keyed hash, proof the sender knows our public
key); under load (the queue, plus the initiations the authority has not answered, past a mark)
it must also carry a valid mac2 (proof it can receive at its source address), else it gets a
cookie reply (paced per message), and sources that prove themselves are rate limited, and held
for a while once the authority refused one of their initiations (`RefusedSources`). What
passes waits in a bounded queue, where sources with nothing queued lately go first
(`backlog.py`); the device works it a few at a time. The pieces themselves
(cookies, pacing, load, rate limit) are in `cookie.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..addresses import Endpoint
from .backlog import HandshakeBacklog
from .constants import MESSAGE_COOKIE_REPLY, MESSAGE_INITIATION
from .cookie import CookieChecker, CookiePacer, Load, RateLimiter, RefusedSources
from .events import Dropped, Event, Transmit
from .indextable import IndexTable
from .limits import HANDSHAKE_QUEUE_SIZE
from .messages import INITIATION_MAC1_OFFSET, MAC_SIZE, RESPONSE_MAC1_OFFSET, TYPE_WORD


class HandshakeScreen:
    __slots__ = ("_checker", "_index", "_load", "_pacer", "_refused", "queue", "rate_limiter")

    def __init__(self, public_key: bytes, rng: Callable[[int], bytes], under_load_after: int,
                 index: IndexTable) -> None:
        self._index = index  # its initiations awaiting the authority count as load
        self._checker = CookieChecker(public_key, rng)
        self._load = Load(under_load_after)
        self._pacer = CookiePacer()
        self.rate_limiter = RateLimiter()
        self._refused = RefusedSources()
        self.queue = HandshakeBacklog()

    def screen(self, datagram: bytes, source: Endpoint, now: float, events: list[Event]) -> None:
        """Queues a handshake message (of its type's size) that passes the checks."""
        kind = datagram[0]
        proven = False
        if kind != MESSAGE_COOKIE_REPLY:  # a reply to us is checked by its own AEAD
            if TYPE_WORD.unpack_from(datagram)[0] != kind:
                events.append(Dropped("handshake with nonzero reserved bytes", source))
                return
            mac1_offset = INITIATION_MAC1_OFFSET if kind == MESSAGE_INITIATION \
                else RESPONSE_MAC1_OFFSET
            checker = self._checker
            if not checker.mac1_valid(datagram, mac1_offset):
                events.append(Dropped("bad mac1", source))
                return
            # Waiting: the queue, initiations the authority has not answered yet, and this one.
            if self._load.under_load(len(self.queue) + self._index.awaiting + 1, now):
                if not checker.mac2_valid(datagram, mac1_offset, source, now):
                    mac1 = datagram[mac1_offset:mac1_offset + MAC_SIZE]
                    if self._pacer.allow(source, mac1, now):
                        sender = TYPE_WORD.unpack_from(datagram, 4)[0]
                        events.append(Transmit(source, [
                            checker.cookie_reply(datagram, mac1_offset, sender, source)]))
                    else:
                        events.append(Dropped("no mac2, and a cookie was sent there just now",
                                              source))
                    return
                if self._refused.held(RateLimiter.key(source[0]), now):
                    events.append(Dropped("handshake rate limit: one from there was refused",
                                          source))
                    return
                if not self.rate_limiter.allow(source[0], now):
                    events.append(Dropped("handshake rate limit", source))
                    return
                proven = True
        dropped = self.queue.add(datagram, source, now, proven)
        if dropped is not None:
            events.append(Dropped("handshake queue full", dropped))

    def unauthenticated(self, source: Endpoint, now: float) -> None:
        """An initiation from `source` that a mac2 proved did not authenticate."""
        self._refused.refused(RateLimiter.key(source[0]), now)

    def shed(self, now: float) -> None:
        """Handshake messages were dropped unread: under load, as when the queue is long."""
        self._load.overflowed(now)

    def goes_first(self, source: Endpoint, now: float) -> bool:
        """See `Device.goes_first`."""
        return self.queue.fresh(source, now)

    def shed_first(self, source: Endpoint, now: float) -> bool:
        """See `Device.shed_first`."""
        return (self._pacer.answered_recently(source, now) or self.queue.would_drop(source, now)
                or not self.admissible(source, now))

    def admissible(self, source: Endpoint, now: float) -> int:
        """See `Device.handshakes_admissible`."""
        if not self._load.lasts(now):
            return HANDSHAKE_QUEUE_SIZE
        key = RateLimiter.key(source[0])
        return 0 if self._refused.held(key, now) else self.rate_limiter.tokens(key, now)
