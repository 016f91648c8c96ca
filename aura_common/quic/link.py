"""One qh3 connection driven through its sans-I/O API, for both ends of the QUIC carrier.

qh3's `QuicConnection` takes datagrams and time in and gives packets, events and a timer out
(`receive_many_datagrams`, `next_event`, `datagrams_to_send`, `get_timer`, `handle_timer`);
its packet processing (protection, framing, acknowledgements, loss recovery) is native code,
so a tunnel packet costs a few microseconds where a pure-Python QUIC stack spends tens.
`QuicLink` is the thin wiring around it: packets leave in GSO batches through a
`DatagramSocket` and one asyncio timer follows `get_timer`, within TIMER_SLACK.

Python still pays per call, so the owner feeds a whole socket burst with `receive`, takes the
events, and calls `transmit` once: the acknowledgements for the burst and every message
queued meanwhile leave together. A burst that queued nothing ends with `acknowledge`
instead: the acknowledgement waits a little for a message to ride with.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter

from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection, QuicConnectionError
from qh3.quic.events import QuicEvent

from aura_common.addresses import Endpoint
from aura_common.quic.datagram import DatagramSocket
from aura_common.wire.framing import ALPN

# qh3 logs every close a peer sends and every protocol error at WARNING, as tracebacks of its
# own: the carriers report what matters, with the fields the journal needs.
logging.getLogger("quic").setLevel(logging.ERROR)

# The largest UDP payload of a QUIC packet, either way: one that crosses a 1500-byte path under
# an IPv6 and a UDP header unfragmented (RFC 9000 section 14). qh3 starts a new packet rather
# than exceed it (an ACK and a message that do not fit together go in two); path MTU probing,
# which would grow packets past it, stays off.
QUIC_PACKET_SIZE = 1500 - 40 - 8
CONNECTION_ID_LENGTH = 8
AEAD_TAG_SIZE = 16
# The packet number as qh3 encodes it in a 1-RTT packet while acknowledgements keep up.
PACKET_NUMBER_SIZE = 2
# What a message costs in a 1-RTT packet as qh3 builds it: the short header (flags byte, the
# peer's connection id, packet number), the AEAD tag, and the DATAGRAM frame's type and
# 2-byte length.
DATAGRAM_OVERHEAD = 1 + CONNECTION_ID_LENGTH + PACKET_NUMBER_SIZE + AEAD_TAG_SIZE + 1 + 2
# The largest WireGuard message handed to qh3; larger ones are dropped. It allows for the
# longest connection ids and packet numbers a peer may choose: a message no packet fits makes
# qh3 fail every later `datagrams_to_send` of the connection. The client's tunnel MTU keeps
# its messages within it.
MAX_MESSAGE = QUIC_PACKET_SIZE - 1 - 20 - 4 - AEAD_TAG_SIZE - 3
# How late the connection's timer may fire: RFC 9002's timer granularity (kGranularity).
# qh3 moves its deadline with nearly every call (a pacing deadline microseconds after each
# send, the idle deadline after each receive); re-arming asyncio's timer for each costs about
# what building a packet does. An armed timer that fires within this slack of the new
# deadline stays; one that fires early only finds nothing due and follows the timer again.
TIMER_SLACK = 0.001
# How long an acknowledgement may wait for a message to carry it. qh3 acknowledges every
# second packet at once; alone, each acknowledgement is a packet of its own that both ends
# pay a system call, a wakeup and a pass through qh3 for. The flows inside the tunnel answer
# most bursts within this time (TCP's acknowledgements go back the other way), so the QUIC
# acknowledgement rides in their packet. Far below the 25 ms max_ack_delay qh3 advertises
# (RFC 9000 section 13.2.1), and DATAGRAM frames are neither retransmitted nor windowed, so
# the peer loses nothing by it.
ACK_DELAY = 0.005


def datagram_configuration(*, is_client: bool, idle_timeout: float,
                           server_name: str | None = None) -> QuicConfiguration:
    """What both ends share. qh3 sends DATAGRAM frames as soon as they are queued, outside its
    congestion window: the flows inside the tunnel run congestion control end to end, as they
    do over WireGuard on UDP, and a second controller in series would only halve the tunnel
    on the same losses."""
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        connection_id_length=CONNECTION_ID_LENGTH,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=65535,
        max_datagram_size=QUIC_PACKET_SIZE,
        probe_datagram_size=False,
        server_name=server_name,
    )


class QuicLink:
    """A `QuicConnection` on a `DatagramSocket`, with one timer.

    Packets leave from `local_address` when set (the address the peer writes to).
    """

    def __init__(self, quic: QuicConnection, sock: DatagramSocket,
                 on_timer_events: Callable[[QuicLink], None]) -> None:
        self.quic = quic
        self.socket = sock
        self.local_address: str | None = None
        self._on_timer_events = on_timer_events
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = False

    def receive(self, datagrams: list[bytes], source: Endpoint) -> None:
        self.quic.receive_many_datagrams(datagrams, source, self._loop.time())

    def send(self, messages: Iterable[bytes], *, now: bool = True) -> int:
        """Queue WireGuard messages and, if `now`, transmit; returns how many were dropped
        (too large for a packet, the handshake not done, or the connection closing).

        Without `now` they wait in qh3 for the owner's next `transmit`, which it makes at the
        end of the socket burst it is handling: what waits is bounded by what one burst
        makes the hub send.
        """
        dropped = 0
        queue = self.quic.send_datagram_frame
        for message in messages:
            if len(message) > MAX_MESSAGE:
                dropped += 1
                continue
            try:
                queue(message)
            except (QuicConnectionError, ValueError):
                # Before the handshake has told qh3 the peer takes DATAGRAM frames (ValueError),
                # or once the connection is closing: WireGuard retransmits what matters.
                dropped += 1
        if now:
            self.transmit()
        return dropped

    def events(self) -> Iterator[QuicEvent]:
        next_event = self.quic.next_event
        while (event := next_event()) is not None:
            yield event

    def transmit(self) -> None:
        """Send what is due and every queued message, then follow the connection's timer."""
        if self._stopped:
            return
        packets = self.quic.datagrams_to_send(now=self._loop.time())
        for destination, group in itertools.groupby(packets, key=itemgetter(1)):
            self.socket.send([data for data, _ in group], destination, self.local_address)
        self._follow_timer()

    def acknowledge(self) -> None:
        """After a received burst that queued nothing to send: what qh3 owes the peer
        (acknowledgements) leaves with the next `transmit`, or alone ACK_DELAY late."""
        if not self._stopped:
            self._follow_timer(ACK_DELAY)

    def _follow_timer(self, slack: float = TIMER_SLACK) -> None:
        deadline = self.quic.get_timer()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._timer_at = None
            return
        latest = deadline + slack
        if self._timer is not None:
            assert self._timer_at is not None
            if self._timer_at <= latest:
                return
            self._timer.cancel()
        self._timer_at = latest
        self._timer = self._loop.call_at(latest, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = max(self._timer_at or 0.0, self._loop.time())
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._on_timer_events(self)
        self.transmit()

    def stop(self) -> None:
        """Leave the connection for good: its timer would keep it sending."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None
