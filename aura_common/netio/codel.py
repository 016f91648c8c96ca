"""CoDel (RFC 8289) for a socket's receive queue: bounds the time packets wait, not their number.

A tunnel carrier in Python drains its UDP socket more slowly than the kernel fills it under
load, so the flows inside the tunnel build a standing queue in the socket's receive buffer:
tens of milliseconds of added latency for every packet, pings included. A small buffer would
cut bursts instead (GRO trains, the reason the buffers are large). CoDel keeps the large
buffer for bursts and drops, at dequeue, only while the time packets waited stays above
TARGET for a whole INTERVAL, then ever more often (INTERVAL / sqrt(count)) until it falls
again: TCP inside backs off just enough that the standing queue stays near TARGET.

I/O-free: the caller passes each packet's sojourn time (the kernel's receive timestamp,
SO_TIMESTAMPNS, against the clock at dequeue) and the current time.
"""

from __future__ import annotations

import math

TARGET = 0.005  # seconds of standing queue tolerated (RFC 8289's default)
INTERVAL = 0.1  # seconds: about the longest round trip of the flows inside
# No more than this many bytes queued behind the packet dequeued is no standing queue (RFC 8289
# section 5.2, "maxpacket"): that packet waited because the reader was busy, not behind
# others, and dropping it would only cost a light flow (a ping) its lone packet.
MAX_PACKET = 1500


class CoDel:
    def __init__(self, target: float = TARGET, interval: float = INTERVAL) -> None:
        self.target = target
        self.interval = interval
        self.dropped = 0
        self._first_above: float | None = None  # when the sojourn stayed above target long
        self._dropping = False
        self._drop_next = 0.0
        self._count = 0
        self._last_count = 0

    def should_drop(self, sojourn: float, now: float, behind: int | None = None) -> bool:
        """Whether the packet being dequeued after waiting `sojourn` seconds is dropped;
        `behind`: the bytes still queued behind it, where the caller knows them."""
        if behind is not None and behind <= MAX_PACKET:
            sojourn = 0.0
        above = self._above_long_enough(sojourn, now)
        if self._dropping:
            if not above:
                self._dropping = False
                return False
            if now >= self._drop_next:
                self._count += 1
                self._drop_next = self._control_law(self._drop_next)
                return self._drop()
            return False
        if not above:
            return False
        self._dropping = True
        # Coming back soon after the last dropping state: resume near its rate (RFC 8289 5.5).
        delta = self._count - self._last_count
        recent = now - self._drop_next < 16 * self.interval
        self._count = delta if delta > 1 and recent else 1
        self._last_count = self._count
        self._drop_next = self._control_law(now)
        return self._drop()

    def _above_long_enough(self, sojourn: float, now: float) -> bool:
        if sojourn < self.target:
            self._first_above = None
            return False
        if self._first_above is None:
            self._first_above = now + self.interval
            return False
        return now >= self._first_above

    def _control_law(self, t: float) -> float:
        return t + self.interval / math.sqrt(self._count)

    def _drop(self) -> bool:
        self.dropped += 1
        return True
