"""The handshake messages that passed screening and wait for their key exchange.

WireGuard keeps them in one FIFO. Under a flood of initiations that carry a valid mac2 from
thousands of sources, each within its per-source rate limit (a source is an IPv4 address or
an IPv6 /64; one IPv6 /48 holds 65,536 of them), the FIFO stays full: a new client's
initiation, even its retry with a cookie, finds no room or waits behind the whole flood.

So sources are served in two classes. A message from a source that has had none queued for
FRESH_AFTER seconds goes first; the others wait behind, in arrival order. When the backlog
is full, a first-class message takes the place of the newest one behind. A client connecting
then gets its key exchange ahead of the flood's sources, which have all had theirs lately;
the flood is left the rest of the capacity. Bounded: at most `capacity` messages and
`sources` remembered sources (the one queued longest ago is forgotten first; an attacker
rotating through more proven sources than that makes every one of them look new, and is
served in arrival order along with the new client, as in a single FIFO).
"""

from __future__ import annotations

from collections import deque

from ..addresses import Endpoint
from .cookie import RateLimiter
from .limits import (
    BACKLOG_SOURCES,
    FRESH_AFTER,
    HANDSHAKE_QUEUE_SIZE,
)

Waiting = tuple[bytes, Endpoint, bool]  # a message, its source, whether a mac2 proved it


class HandshakeBacklog:
    def __init__(self, capacity: int = HANDSHAKE_QUEUE_SIZE,
                 sources: int = BACKLOG_SOURCES, fresh_after: float = FRESH_AFTER) -> None:
        self._capacity, self._sources, self._fresh_after = capacity, sources, fresh_after
        self._first: deque[Waiting] = deque()
        self._behind: deque[Waiting] = deque()
        self._queued_at: dict[bytes, float] = {}  # source key -> last queued, oldest first

    def add(self, datagram: bytes, source: Endpoint, now: float,
            proven: bool) -> Endpoint | None:
        """Queues a message; returns the source of the message dropped for want of room
        (this one, or one queued behind that it displaced), or None.

        A message dropped for want of room counts as queued for its source too: it had its
        turn, so a flood source that finds the backlog full does not stay new (and first in
        line at the carrier, `fresh`) for every message it sends."""
        key = _key(source)
        queued_at = self._queued_at
        fresh = self._fresh(key, now)
        queued_at.pop(key, None)
        queued_at[key] = now  # re-inserted last: dicts keep insertion order
        if len(queued_at) > self._sources:
            del queued_at[next(iter(queued_at))]
        if len(self._first) + len(self._behind) >= self._capacity:
            if not fresh or not self._behind:
                return source
            dropped = self._behind.pop()[1]
        else:
            dropped = None
        (self._first if fresh else self._behind).append((datagram, source, proven))
        return dropped

    def fresh(self, source: Endpoint, now: float) -> bool:
        """Whether a message from `source` would go first (none queued for FRESH_AFTER)."""
        return self._fresh(_key(source), now)

    def would_drop(self, source: Endpoint, now: float) -> bool:
        """Whether `add` would drop a message from `source` now (full, and the source had
        one queued lately): a carrier sheds such messages before it reads them."""
        if len(self._first) + len(self._behind) < self._capacity:
            return False
        return not self._behind or not self._fresh(_key(source), now)

    def _fresh(self, key: bytes, now: float) -> bool:
        last = self._queued_at.get(key)
        return last is None or now - last >= self._fresh_after

    def pop(self) -> Waiting:
        return self._first.popleft() if self._first else self._behind.popleft()

    def __len__(self) -> int:
        return len(self._first) + len(self._behind)


def _key(source: Endpoint) -> bytes:
    try:
        return RateLimiter.key(source[0])
    except OSError:  # not an IP address: an endpoint a carrier named otherwise
        return source[0].encode()
