"""Flow queueing with CoDel (RFC 8290, fq_codel) for the packets a process reads from its TUN.

A TCP flow through the tunnel keeps its congestion window in flight, and the part the tunnel
cannot carry at once waits in the queue in front of the process that reads the TUN: the
kernel's TUN ring, a FIFO with no queue discipline whose packets TCP Small Queues no longer
count. A ping or an acknowledgement arriving there waits behind all of it. Reading the ring
out at once into this queue moves the wait to where it can be ordered and measured:

* Packets are kept per flow (addresses and ports); a flow that arrives with nothing queued is
  a new (sparse) flow and is served before the backlogged ones, so a ping, a DNS query or an
  interactive flow's packet waits for one turn's worth of bulk packets at most, not for the
  whole backlog.
* Backlogged flows take turns, `quantum` bytes each, and each keeps its order (a TCP flow's
  segments stay consecutive, so the far side's TUN write can merge them again).
* Each flow runs CoDel on the time its head packet waited: while that stays above TARGET for
  an INTERVAL, a head packet is marked Congestion Experienced if its sender negotiated ECN
  (RFC 3168, as fq_codel does), else dropped, ever more often until the wait falls again.
* The queue is bounded in bytes, sized to a time: past what it dequeues in TIME_LIMIT at
  the rate it has been dequeuing (never below LIMIT_FLOOR, nor above LIMIT_CEILING), it drops
  from the head of the flow with the most bytes queued, the one that built the backlog, but
  never from a flow holding a quantum or less: a burst of many light flows (a thousand peers'
  pings) is kept whole. CoDel
  alone does not bound the queue: BBR, Linux's usual congestion control for bulk senders,
  barely slows down for a lost packet, and not at all for a CE mark.

I/O-free: the caller passes packets and the time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from aura_common.netio.codel import CoDel

# Bytes a backlogged flow sends per turn of the round: about a full TSO write, so a bulk
# flow's segments go out in runs the far side merges back into one write.
QUANTUM = 64 << 10
# The byte limit: TIME_LIMIT of the dequeue rate measured over each RATE_WINDOW, at least two
# TSO reads, and about 5 ms at 6 Gb/s at most.
TIME_LIMIT = 0.005
RATE_WINDOW = 0.1
LIMIT_FLOOR = 128 << 10
LIMIT_CEILING = 4 << 20

Outlet = TypeVar("Outlet")

_ECN_MASK = 0x03
_CE = 0x03


class _Flow:
    __slots__ = ("bytes", "codel", "key", "packets")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.packets: deque[tuple[float, bytes]] = deque()
        self.bytes = 0
        self.codel = CoDel()


def flow_key(packet: bytes) -> bytes:
    """What tells flows apart: addresses and the four bytes after the IP header (the ports of
    TCP and UDP). IPv4 options or IPv6 extension headers only make a flow look like another
    one, which costs it isolation, not order."""
    version = packet[0] >> 4 if packet else 0
    if version == 4:
        start = (packet[0] & 0x0F) * 4
        return packet[12:20] + packet[start:start + 4]
    if version == 6:
        return packet[8:44]
    return packet[:1]


def mark_ce(packet: bytes) -> bytes | None:
    """`packet` with ECN Congestion Experienced set, or None if its sender is not ECN-capable
    (ECN field 00: the packet must be dropped instead). RFC 3168 section 5."""
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ecn = packet[1] & _ECN_MASK
        if ecn == 0:
            return None
        if ecn == _CE:
            return packet
        header = bytearray(packet[:20])
        old = header[0] << 8 | header[1]
        header[1] |= _CE
        new = header[0] << 8 | header[1]
        # Incremental checksum update (RFC 1624, eqn. 3): HC' = ~(~HC + ~m + m').
        checksum = (~(header[10] << 8 | header[11]) & 0xFFFF) + (~old & 0xFFFF) + new
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        checksum = (checksum & 0xFFFF) + (checksum >> 16)
        header[10:12] = (~checksum & 0xFFFF).to_bytes(2, "big")
        return bytes(header) + packet[20:]
    if version == 6 and len(packet) >= 40:
        ecn = (packet[1] >> 4) & _ECN_MASK
        if ecn == 0:
            return None
        if ecn == _CE:
            return packet
        return packet[:1] + bytes([packet[1] | _CE << 4]) + packet[2:]
    return None


class FlowQueue:
    """Packets per flow, sparse flows first, CoDel per flow, at most `limit` bytes."""

    def __init__(self, quantum: int = QUANTUM) -> None:
        self.limit = LIMIT_FLOOR
        self.quantum = quantum
        self.bytes = 0
        self.dropped = 0  # by CoDel or the byte limit
        self.marked = 0  # ECN CE instead of a drop
        self._flows: dict[bytes, _Flow] = {}
        self._new: deque[_Flow] = deque()  # arrived with nothing queued: served first
        self._old: deque[_Flow] = deque()  # backlogged: served in turn
        self._window_start = 0.0
        self._window_bytes = 0  # dequeued since _window_start

    def __bool__(self) -> bool:
        return self.bytes > 0

    def __len__(self) -> int:
        """Packets waiting."""
        return sum(len(flow.packets) for flow in self._flows.values())

    def push(self, packets: Iterable[bytes], now: float) -> None:
        flows = self._flows
        added = 0
        for packet in packets:
            key = flow_key(packet)
            flow = flows.get(key)
            if flow is None:
                flow = flows[key] = _Flow(key)
                self._new.append(flow)
            flow.packets.append((now, packet))
            flow.bytes += len(packet)
            added += len(packet)
        self.bytes += added
        while self.bytes > self.limit and self._drop_from_fattest():
            pass

    def pop(self, budget: int, now: float) -> list[bytes]:
        """Packets to send now, about `budget` bytes (at least one packet if any wait)."""
        out: list[bytes] = []
        taken = 0
        while taken < budget:
            if self._new:
                flow, queue = self._new[0], self._new
            elif self._old:
                flow, queue = self._old[0], self._old
            else:
                break
            taken += self._serve(flow, min(self.quantum, budget - taken), now, out)
            queue.popleft()
            if flow.packets:
                self._old.append(flow)
            else:
                del self._flows[flow.key]
        self.bytes -= taken
        self._measure(taken, now)
        return out

    def _measure(self, dequeued: int, now: float) -> None:
        self._window_bytes += dequeued
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW:
            rate = self._window_bytes / elapsed
            self.limit = max(LIMIT_FLOOR, min(LIMIT_CEILING, int(rate * TIME_LIMIT)))
            self._window_start, self._window_bytes = now, 0

    def _serve(self, flow: _Flow, quantum: int, now: float, out: list[bytes]) -> int:
        """Up to `quantum` bytes of `flow` (at least one packet) into `out`; bytes removed."""
        packets = flow.packets
        removed = 0
        queued_at, head = packets[0]
        if flow.codel.should_drop(now - queued_at, now):
            packets.popleft()
            removed += len(head)
            marked = mark_ce(head)
            if marked is None:
                self.dropped += 1
            else:
                self.marked += 1
                out.append(marked)
        while packets and removed < quantum:
            packet = packets.popleft()[1]
            removed += len(packet)
            out.append(packet)
        flow.bytes -= removed
        return removed

    def _drop_from_fattest(self) -> bool:
        """Drop head packets of the fattest flow until the queue is within its limit, keeping
        a quantum and its last packet; False if none was dropped (then no flow has more)."""
        fattest = max(self._flows.values(), key=lambda flow: flow.bytes)
        packets = fattest.packets
        dropped = 0
        while self.bytes > self.limit and fattest.bytes > self.quantum and len(packets) > 1:
            size = len(packets.popleft()[1])
            fattest.bytes -= size
            self.bytes -= size
            dropped += 1
        self.dropped += dropped
        return dropped > 0


class FlowQueues(Generic[Outlet]):
    """A FlowQueue per outlet (the router's transport links), so an outlet that does not take
    its packets holds back only its own flows; drops and marks are counted over all, those of
    closed outlets included."""

    def __init__(self) -> None:
        self.queues: dict[Outlet, FlowQueue] = {}
        self._dropped = 0  # by queues of outlets since closed
        self._marked = 0

    def __bool__(self) -> bool:
        return any(self.queues.values())

    def of(self, outlet: Outlet) -> FlowQueue:
        queue = self.queues.get(outlet)
        if queue is None:
            queue = self.queues[outlet] = FlowQueue()
        return queue

    def close(self, outlet: Outlet) -> None:
        """Forget `outlet`'s queue and what waits in it (counted dropped)."""
        queue = self.queues.pop(outlet, None)
        if queue is not None:
            self._dropped += queue.dropped + len(queue)
            self._marked += queue.marked

    @property
    def dropped(self) -> int:
        return self._dropped + sum(queue.dropped for queue in self.queues.values())

    @property
    def marked(self) -> int:
        return self._marked + sum(queue.marked for queue in self.queues.values())
