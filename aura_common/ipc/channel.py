"""One connected SOCK_SEQPACKET socket carrying frames (aura_common.ipc.frames).

One `recv` of a SEQPACKET socket is one whole frame, so there is no stream framing to parse.
The data path runs through here, so a channel reads every frame the socket holds in one
reader callback into a queue bounded in bytes (`recv_many` takes them all at once), one `pkts`
frame carries the packets of many peers (`send_packets`), and packet batches are sent without
blocking: a full socket drops the batch and counts it, as a full NIC queue would. Control
frames use `send_reliable` (or `post`, which does it in the background), which waits for room
instead. A `pkts` frame carries its send time (`at`, the monotonic clock the processes
share): the receiving channel runs CoDel on it at dequeue, so packets do not stand in the
large socket buffers for tens of milliseconds while the receiver is the bottleneck (TCP
inside the tunnel backs off instead).

Every frame read is bounded before it is used (docs/bounds.md, "IPC and files"): at most
MAX_FRAME bytes, decoded within `frames.read_map`'s limits, and checked field by field against
the channel's `Protocol`; a frame that fails is a protocol error that closes the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aura_common.errors import AuraError
from aura_common.ipc import frames
from aura_common.ipc.bounded import ByteQueue
from aura_common.ipc.credentials import peer_credentials
from aura_common.ipc.frames import MAX_FRAME, MAX_ITEMS, Frame, Packets, Protocol, ProtocolError
from aura_common.netio.codel import CoDel

log = logging.getLogger("aura_common.ipc")

SOCKET_BUFFER = 4 << 20
# Bytes of frames read but not yet taken by `recv`; above this the channel stops reading, so
# the sender's socket fills and its packet batches are dropped there (and counted).
MAX_QUEUED_BYTES = 4 << 20
# Bytes read from one channel per wakeup of the event loop (at least one frame): packets are
# handled as they are read, so the loop's other readers (the router's TUN, where the replies
# to those packets wait in the device's queue, `tun.QUEUE_PACKETS`) get their turn between bursts.
READ_BUDGET = 256 << 10
# Bytes of `post`ed frames not yet sent. Above this `recv` waits for them to go out: a peer
# that sends requests and never reads the replies holds back its own requests (its socket
# then fills), instead of the receiver keeping every reply it cannot send.
MAX_POSTED_BYTES = 4 << 20
# Linux socket options Python does not name (asm-generic/socket.h): root may exceed wmem_max.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# Overhead the kernel reserves per Unix datagram out of the send buffer.
_SKB_OVERHEAD = 1024


class ChannelClosed(AuraError):
    """The other side closed the channel, or it broke (the message says why)."""


class FrameTooLarge(ValueError):
    """A frame to send does not fit the channel's limit; split the batch (`send_packets`)."""


def _tune_buffers(sock: socket.socket) -> None:
    for force, plain in (
        (SO_SNDBUFFORCE, socket.SO_SNDBUF),
        (SO_RCVBUFFORCE, socket.SO_RCVBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except PermissionError:
            # Unprivileged: the kernel caps this at net.core.wmem_max / rmem_max.
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _unread_bytes(sock: socket.socket) -> int:
    """The bytes of every frame waiting in the socket (SIOCINQ sums a SOCK_SEQPACKET queue)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                   bytes(4)))[0])
    except OSError:
        return 0


def _unsent_bytes(sock: socket.socket) -> int:
    """Bytes sent that the other side has not read (SIOCOUTQ: a Unix socket's send buffer is
    charged for each frame until the receiver takes it), the kernel's overhead included."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ,
                                                   bytes(4)))[0])
    except OSError:
        return 0


class Channel:
    """One connected SEQPACKET socket carrying frames; it accepts the frames of `protocol`.

    `role` is the *other* side's role: on a listener, the one its `authorize` decided from
    SO_PEERCRED; on a connecting side, the one the listener announced.
    """

    def __init__(self, sock: socket.socket, protocol: Protocol, role: str = "") -> None:
        sock.setblocking(False)
        _tune_buffers(sock)
        self.sock = sock
        self.protocol = protocol
        self.role = role
        self.peer_credentials = peer_credentials(sock)
        self.dropped = 0
        # A frame larger than the send buffer fails with EMSGSIZE; stay below it.
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.max_frame = min(MAX_FRAME, sndbuf - _SKB_OVERHEAD)
        self._loop = asyncio.get_running_loop()
        self._fd = sock.fileno()
        self._buffer = bytearray(MAX_FRAME + 1)
        self._view = memoryview(self._buffer)
        # Frames read and not yet taken, each with its encoded size.
        self._queue: ByteQueue[tuple[dict[str, Any], int]] = ByteQueue(MAX_QUEUED_BYTES)
        # Set by a receiver of packets: `pkts` frames' batches go here, from the reader
        # callback itself while no other frame waits before them (no turn of the event loop
        # between socket and handler), else in order from `recv`.
        self.on_packets: Callable[[frames.Batches], None] | None = None
        self._joiner = frames.Joiner(protocol)
        self._waiter: asyncio.Future[None] | None = None
        self._writer_waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._closed_reason: str | None = None
        self._send_lock = asyncio.Lock()
        self._posted: set[asyncio.Task[None]] = set()  # `post`ed frames still being sent
        self.posted_bytes = 0  # their encoded size
        self._posted_waiter: asyncio.Future[None] | None = None
        # The time `pkts` frames wait between send and dequeue (see `_police`), and the
        # packets dropped for it.
        self.aqm = CoDel()
        self.delay_dropped = 0
        self._start_reading()

    def __repr__(self) -> str:
        c = self.peer_credentials
        return f"<Channel role={self.role or '?'} pid={c.pid} uid={c.uid}>"

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def queued(self) -> int:
        """Frames received and not yet taken by `recv` (a metric)."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Encoded bytes of those frames (at most MAX_QUEUED_BYTES + MAX_FRAME)."""
        return self._queue.size

    # -- receiving ---------------------------------------------------------------------

    def _start_reading(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _readable(self) -> None:
        budget = READ_BUDGET
        while budget > 0:
            if self._queue.full:
                self._stop_reading()  # resumes once `recv` has taken frames off the queue
                break
            try:
                size = self.sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(f"receive failed: {exc.strerror}")
                break
            if size == 0:
                self._fail("closed by the other side")
                break
            if size > MAX_FRAME:
                log.warning("%r sent a frame over %d bytes; closing the channel",
                            self, MAX_FRAME)
                self._abort(f"frame over {MAX_FRAME} bytes")
                break
            try:
                mapping = frames.read_map(self._view[:size])
            except ProtocolError as exc:
                log.warning("%r sent a bad frame (%s); closing the channel", self, exc)
                self._abort("undecodable frame")
                break
            budget -= size
            if self.on_packets is not None and not self._queue and mapping["t"] == Packets.TAG:
                # Nothing waits before it: handled now, not a turn of the loop later.
                self._deliver_now(mapping, size)
                if self.closed:
                    break
                continue
            self._queue.push((mapping, size), size)
        if self._queue:
            # Only for a frame to take: packets handled above would wake `recv` for nothing,
            # a turn of the loop (and a new future) per batch, ahead of the next reader.
            self._wake()

    def _deliver_now(self, mapping: dict[str, Any], size: int) -> None:
        assert self.on_packets is not None
        try:
            frame = self._accept(mapping, size)
        except ChannelClosed:
            return  # logged and closed
        if frame is None:
            return
        try:
            self.on_packets(frame.batches)  # type: ignore[attr-defined]
        except Exception:
            log.exception("%r: packet handler failed; closing the channel", self)
            self._fail("packet handler failed")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait_for_frames(self) -> None:
        while not self._queue:
            if self._closed_reason is not None:
                raise ChannelClosed(self._closed_reason)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _take(self) -> tuple[dict[str, Any], int]:
        mapping = self._queue.pop()
        if self._queue.size < MAX_QUEUED_BYTES // 2:
            self._start_reading()
        return mapping

    async def recv(self) -> Frame:
        """The next frame (a chunked one joined); raises ChannelClosed once the channel is
        closed and drained, or after a frame the protocol does not allow (logged, channel
        closed). With `on_packets` set, `pkts` frames go there instead, in order with the
        others. Waits while more than MAX_POSTED_BYTES of posted frames are unsent."""
        while True:
            await self._room_for_replies()
            await self._wait_for_frames()
            frame = self._accept(*self._take())
            if frame is not None and not self._packets_handled(frame):
                return frame

    async def recv_many(self) -> list[Frame]:
        """Every frame read so far (at least one), for batch processing."""
        while True:
            await self._room_for_replies()
            await self._wait_for_frames()
            received = []
            while self._queue:
                frame = self._accept(*self._take())
                if frame is not None and not self._packets_handled(frame):
                    received.append(frame)
            if received:
                return received

    def _packets_handled(self, frame: Frame) -> bool:
        if self.on_packets is None or not isinstance(frame, Packets):
            return False
        self.on_packets(frame.batches)
        return True

    def _accept(self, mapping: dict[str, Any], size: int) -> Frame | None:
        """The frame `mapping` (`size` bytes encoded) is, joined with earlier parts; None
        while parts are missing."""
        try:
            joined = self._joiner.add(mapping, size)
            if joined is None:
                return None
            frame = frames.from_map(joined, self.protocol)
        except ProtocolError as problem:
            log.warning("%r sent a bad frame: %s; closing the channel", self, problem)
            self._abort(str(problem))
            raise ChannelClosed(str(problem)) from None
        if isinstance(frame, Packets):
            return self._police(frame)
        return frame

    def _police(self, frame: Packets) -> Packets:
        """CoDel at dequeue: while frames keep waiting over its target, drop a head packet:
        the one of the peer with the most packets in the frame, as fq_codel drops from its
        fattest flow (a bulk flow backs off, the many light peers lose nothing).

        An in-tunnel control payload (first byte no IP version) is never dropped: it carries
        a client's address and manifest, sent once per handshake.
        """
        now = time.monotonic()
        sojourn = now - frame.at
        behind = None
        if sojourn >= self.aqm.target:  # what waits behind its first packet matters only now
            behind = (sum(len(packet) for _, packets in frame.batches for packet in packets)
                      - next((len(packets[0]) for _, packets in frame.batches if packets), 0)
                      + self._queue.size + _unread_bytes(self.sock))
        if not self.aqm.should_drop(sojourn, now, behind):
            return frame
        droppable = [position for position, (_, packets) in enumerate(frame.batches)
                     if packets and packets[0][:1] and packets[0][0] >> 4 in (4, 6)]
        if not droppable:
            return frame
        position = max(droppable, key=lambda p: len(frame.batches[p][1]))
        self.delay_dropped += 1
        batches = list(frame.batches)
        peer, packets = batches[position]
        batches[position] = (peer, packets[1:])
        return Packets(frame.at, batches)

    # -- sending -----------------------------------------------------------------------

    def _checked(self, data: bytes) -> bytes:
        if len(data) > self.max_frame:
            raise FrameTooLarge(f"frame of {len(data)} bytes over the limit of {self.max_frame}")
        return data

    def unread_by_peer(self) -> int:
        """Bytes of frames sent on this channel that the other side has not read yet."""
        return _unsent_bytes(self.sock)

    def send(self, frame: Frame) -> bool:
        """Send without waiting. False when the socket is full (counted in `dropped`) or closed."""
        return self._send_encoded(frames.encode(frame))

    def _send_encoded(self, data: bytes) -> bool:
        if self.closed:
            return False
        self._checked(data)
        if self._send_lock.locked():
            # A reliable frame is waiting for room; do not overtake it.
            self.dropped += 1
            return False
        try:
            self.sock.send(data)
            return True
        except (BlockingIOError, InterruptedError):
            self.dropped += 1
            return False
        except OSError as exc:
            self._fail(f"send failed: {exc.strerror}")
            return False

    def send_packets(self, batches: Iterable[tuple[str, Sequence[bytes]]]) -> bool:
        """Send IP packets for many peers, (peer, packets) pairs, in as few `pkts` frames as
        the frame limit allows: one frame per wakeup, whatever the number of peers.

        False if any frame was dropped (full socket) or the channel is closed.
        """
        budget = self.max_frame - 64
        at = time.monotonic()
        frame: list[tuple[str, list[bytes]]] = []
        ok, size = True, 0
        for peer, packets in batches:
            head = len(peer.encode()) + 16  # the pair's array, string and list headers
            current: list[bytes] | None = None
            for packet in packets:
                cost = len(packet) + 5  # msgpack bin32 header
                if current is None or len(current) >= MAX_ITEMS or size + cost > budget:
                    if frame and (size + head + cost > budget or len(frame) >= MAX_ITEMS):
                        ok = self._send_encoded(frames.packets(frame, at)) and ok
                        frame, size = [], 0
                    current = []
                    frame.append((peer, current))
                    size += head
                current.append(packet)
                size += cost
        if frame:
            ok = self._send_encoded(frames.packets(frame, at)) and ok
        return ok

    async def send_reliable(self, frame: Frame) -> None:
        """Send, waiting for room in the socket; raises ChannelClosed if the channel breaks.

        A frame whose list may outgrow one frame (`CHUNKED`) goes in parts of at most
        CHUNK_BYTES, under the send lock, so no other frame comes between them.
        """
        await self._send_parts(self._parts(frame))

    def _parts(self, frame: Frame) -> list[bytes]:
        return [self._checked(part) for part in
                frames.encode_parts(frame, min(frames.CHUNK_BYTES, self.max_frame))]

    async def _send_parts(self, parts: list[bytes]) -> None:
        async with self._send_lock:
            for part in parts:
                await self._send_waiting(part)

    def post(self, frame: Frame) -> None:
        """`send_reliable` in the background, for a sender that must not wait (a frame that
        must not be dropped like a packet batch may be). A channel closing meanwhile ends it:
        whoever serves the channel notices that. While more than MAX_POSTED_BYTES wait,
        `recv` takes no more frames (the requests that earn these replies)."""
        parts = self._parts(frame)
        size = sum(map(len, parts))
        self.posted_bytes += size
        task = self._loop.create_task(self._send_posted(parts, size))
        self._posted.add(task)
        task.add_done_callback(self._posted.discard)

    async def _send_posted(self, parts: list[bytes], size: int) -> None:
        try:
            with contextlib.suppress(ChannelClosed, OSError):
                await self._send_parts(parts)
        finally:
            self.posted_bytes -= size
            waiter = self._posted_waiter
            if self.posted_bytes <= MAX_POSTED_BYTES and waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _room_for_replies(self) -> None:
        while self.posted_bytes > MAX_POSTED_BYTES and self._closed_reason is None:
            self._posted_waiter = self._loop.create_future()
            try:
                await self._posted_waiter
            finally:
                self._posted_waiter = None

    async def _send_waiting(self, data: bytes) -> None:
        while True:
            if self._closed_reason is not None:
                raise ChannelClosed(self._closed_reason)
            try:
                self.sock.send(data)
                return
            except (BlockingIOError, InterruptedError):
                await self._writable()
            except OSError as exc:
                self._fail(f"send failed: {exc.strerror}")

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loop.add_writer(self._fd, _resolve, ready)
        self._writer_waiter = ready
        try:
            await ready
        finally:
            self._writer_waiter = None
            if not self.closed:
                self._loop.remove_writer(self._fd)

    # -- closing -----------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        # Unregister the fd before closing it: a reused fd number must not inherit callbacks.
        self._stop_reading()
        if self._writer_waiter is not None:
            self._loop.remove_writer(self._fd)
            if not self._writer_waiter.done():
                self._writer_waiter.set_result(None)  # the sender sees the reason and raises
        if self._posted_waiter is not None and not self._posted_waiter.done():
            self._posted_waiter.set_result(None)
        self._wake()
        self.sock.close()

    def _abort(self, reason: str) -> None:
        """Close after a protocol violation, telling the other side why (best effort)."""
        with contextlib.suppress(OSError):
            self.sock.send(frames.encode(frames.Error(reason)))
        self._fail(reason)

    def close(self) -> None:
        self._fail("closed")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
