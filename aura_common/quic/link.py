"""One aioquic connection driven through its sans-I/O API, for both ends of the QUIC carrier.

aioquic's `QuicConnection` takes datagrams and time in and gives packets, events and a timer
out (`receive_datagram`, `next_event`, `datagrams_to_send`, `get_timer`, `handle_timer`).
`QuicLink` is the thin wiring around it: packets leave in GSO batches through a
`DatagramSocket`, one asyncio timer follows `get_timer`, and WireGuard messages wait in a
queue bounded in bytes until the next `transmit`.

Python pays per call, so the owner feeds a whole socket burst with `receive`, takes the
events, and calls `transmit` once: the acknowledgements for the burst and every message
queued meanwhile leave together.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE, QuicSentPacket

from aura_common.bounded import ByteQueue
from aura_common.framing import ALPN
from aura_common.quic.datagram import Address, DatagramSocket

# The largest UDP payload of a QUIC packet, either way: one that crosses a 1500-byte path under
# an IPv6 and a UDP header unfragmented (RFC 9000 section 14). aioquic starts a new packet
# rather than exceed it (an ACK and a message that do not fit together go in two), and it
# announces no smaller max_udp_payload_size, so either side accepts larger packets from an
# older peer.
QUIC_PACKET_SIZE = 1500 - 40 - 8
CONNECTION_ID_LENGTH = 8
AEAD_TAG_SIZE = 16
# What a message costs in a 1-RTT packet as aioquic builds it: the short header (flags byte,
# the peer's connection id, packet number), the AEAD tag, and the DATAGRAM frame's type and
# 2-byte length.
DATAGRAM_OVERHEAD = 1 + CONNECTION_ID_LENGTH + PACKET_NUMBER_SEND_SIZE + AEAD_TAG_SIZE + 1 + 2
# The largest WireGuard message queued; larger ones are dropped. It allows for the longest
# connection ids and packet numbers a peer may choose: a message no packet fits would stall
# aioquic's datagram queue. The client's tunnel MTU keeps its messages within it.
MAX_MESSAGE = QUIC_PACKET_SIZE - 1 - 20 - 4 - AEAD_TAG_SIZE - 3
# Bytes of WireGuard messages waiting for the next transmit; beyond this they are dropped, as
# a full NIC queue would, instead of adding latency (about 2 ms at a gigabit).
MAX_QUEUED_BYTES = 256 << 10
# Messages handed to aioquic per `datagrams_to_send`: its pacer releases at most 16 packets
# at once, so this is all one call can send, and all aioquic holds when the window is full.
PACER_BURST = 16
# `datagrams_to_send` calls per transmit, at most: the queue drains in one transmit even if the
# pacer lets only one packet go per call.
MAX_ROUNDS = MAX_QUEUED_BYTES // 1024

TUNNEL_CONGESTION_CONTROL = "aura-tunnel"
# The pacing rate the tunnel window aims at (bytes/s, about 1 Gb/s): above what a Python
# carrier moves, so pacing never slows the tunnel, yet low enough that aioquic's pacer (one
# packet per `max_datagram_size / rate`, at least 1 us) still releases its full burst per
# call. aioquic paces at window / its smoothed RTT, which lies between 1 ms and ours (it
# subtracts the peer's ACK delay): at least this rate, and up to 10 times it before the
# pacer's 1 us floor shrinks its bursts.
TUNNEL_PACING_RATE = 1 << 27
# aioquic's floor under every RTT sample but the first.
MIN_RTT_SAMPLE = 0.001
# aioquic's pacer bursts a quarter of the window, at most 16 packets: keep room for 16.
MIN_TUNNEL_WINDOW = 128 << 10
# Bytes in flight at most: it bounds what aioquic tracks while acknowledgements stall.
MAX_TUNNEL_WINDOW = 8 << 20


def tunnel_window(smoothed_rtt: float) -> int:
    """The congestion window that paces at TUNNEL_PACING_RATE for this round-trip time."""
    return max(MIN_TUNNEL_WINDOW, min(MAX_TUNNEL_WINDOW, int(TUNNEL_PACING_RATE * smoothed_rtt)))


class TunnelCongestionControl(QuicCongestionControl):
    """A window that ignores loss and only follows the round-trip time.

    The flows inside the tunnel run congestion control end to end and back off on the loss
    they see. A second controller in series (aioquic's Reno or CUBIC) halves its window on the
    very same loss and throttles the whole tunnel to a fraction of the path; WireGuard over UDP
    has no such layer either. DATAGRAM frames are never retransmitted, so nothing else depends
    on the window. aioquic paces at window / RTT: the window follows the RTT (smoothed as RFC
    9002 does) so that the pacing rate stays at TUNNEL_PACING_RATE.
    """

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = MIN_TUNNEL_WINDOW
        self._smoothed_rtt: float | None = None

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        pass

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        smoothed = self._smoothed_rtt
        self._smoothed_rtt = (rtt if smoothed is None
                              else 7 / 8 * smoothed + 1 / 8 * max(rtt, MIN_RTT_SAMPLE))
        self.congestion_window = tunnel_window(self._smoothed_rtt)


register_congestion_control(TUNNEL_CONGESTION_CONTROL, TunnelCongestionControl)


def datagram_configuration(*, is_client: bool, idle_timeout: float,
                           server_name: str | None = None) -> QuicConfiguration:
    return QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        congestion_control_algorithm=TUNNEL_CONGESTION_CONTROL,
        connection_id_length=CONNECTION_ID_LENGTH,
        idle_timeout=idle_timeout,
        max_datagram_frame_size=65535,
        max_datagram_size=QUIC_PACKET_SIZE,
        server_name=server_name,
    )


class MessageQueue(ByteQueue[bytes]):
    """WireGuard messages waiting to be handed to aioquic, bounded in bytes."""

    def __init__(self, limit: int = MAX_QUEUED_BYTES) -> None:
        super().__init__(limit)

    def put(self, message: bytes) -> bool:
        """Queue `message` if it fits; False if it is too large or there is no room."""
        length = len(message)
        return length <= MAX_MESSAGE and self.offer(message, length)


class QuicLink:
    """A `QuicConnection` on a `DatagramSocket`, with one timer and a bounded message queue.

    Packets leave from `local_address` when set (the address the peer writes to).
    """

    def __init__(self, quic: QuicConnection, sock: DatagramSocket,
                 on_timer_events: Callable[[QuicLink], None]) -> None:
        self.quic = quic
        self.socket = sock
        self.local_address: str | None = None
        self.queue = MessageQueue()
        self._on_timer_events = on_timer_events
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = False

    def receive(self, datagrams: Iterable[bytes], source: Address) -> None:
        now = self._loop.time()
        receive = self.quic.receive_datagram
        for data in datagrams:
            receive(data, source, now)

    def send(self, messages: Iterable[bytes], *, now: bool = True) -> int:
        """Queue WireGuard messages and, if `now`, transmit; returns how many were dropped.

        A batch larger than the queue does not overflow it: when it fills, what it holds is
        transmitted first. Only what aioquic cannot take at once is dropped.
        """
        dropped = 0
        queue = self.queue
        for message in messages:
            if queue.put(message):
                continue
            if len(message) <= MAX_MESSAGE and queue:
                self.transmit()
                if queue.put(message):
                    continue
            dropped += 1
        if now:
            self.transmit()
        return dropped

    def events(self) -> Iterator[QuicEvent]:
        next_event = self.quic.next_event
        while (event := next_event()) is not None:
            yield event

    def transmit(self) -> None:
        """Send what is due and the queued messages aioquic's pacer lets go now, then follow
        the connection's timer."""
        if self._stopped:
            return
        quic, queue = self.quic, self.queue
        for _ in range(MAX_ROUNDS):
            for message in queue.take(PACER_BURST):
                quic.send_datagram_frame(message)
            packets = quic.datagrams_to_send(now=self._loop.time())
            for destination, group in itertools.groupby(packets, key=itemgetter(1)):
                self.socket.send([data for data, _ in group], destination, self.local_address)
            if not packets or not queue:
                break
        self._follow_timer()

    def _follow_timer(self) -> None:
        timer_at = self.quic.get_timer()
        if timer_at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = timer_at
        if timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._fire)

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

