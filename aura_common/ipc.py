"""msgpack frames over SOCK_SEQPACKET Unix sockets: the link between Aura processes.

One `recv` of a SEQPACKET socket is one whole frame, so there is no stream framing to parse.
Each frame is a msgpack map whose key `t` names it (see docs/architecture.md). The connecting
side speaks first with `{"t": "hello", "v": PROTOCOL_VERSION, "role": ...}`; the listener
checks the caller's SO_PEERCRED and answers with its own hello (or an `error` frame, then
closes).

Who may connect, and in which role, is decided on the listening side from SO_PEERCRED by the
listener's `admits` and `authorize` callbacks (see aura_common.accounts): a caller whose uid
may take no role there is closed as it is accepted, before anything of it is read; the role
in the hello of the others only has to agree with what their uid allows.

The data path runs through here, so a channel reads every frame the socket holds in one
reader callback into a queue bounded in bytes (`recv_many` takes them all at once), one `pkts`
frame carries the packets of many peers (`send_packets`), and packet batches are sent without
blocking: a full socket drops the batch and counts it, as a full NIC
queue would. Control frames use `send_reliable`, which waits for room instead. A `pkts` frame
carries its send time (`at`, the monotonic clock the processes share): the receiving channel
runs CoDel on it at dequeue, so packets do not stand in the large socket buffers for tens of
milliseconds while the receiver is the bottleneck (TCP inside the tunnel backs off instead).

Every frame read is bounded before it is used (docs/bounds.md, "IPC and files"): at most
MAX_FRAME bytes; decoded with msgpack's length limits and an object budget, so it takes at
most DECODE_EXPANSION times its size in memory; and, where the receiver set `shapes`, checked
field by field. A frame whose list outgrows one frame (the peer list, the status of thousands
of peers) is sent in parts of at most CHUNK_BYTES (`send_chunked`) and joined again by `recv`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgpack

from aura_common.errors import AuraError
from aura_common.netio.codel import CoDel
from aura_common.wireguard.authority import TICKET_SIZE
from aura_common.wireguard.constants import INITIATION_SIZE, RESPONSE_SIZE

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
SOCKET_BUFFER = 4 << 20
HELLO_TIMEOUT = 5.0
# Connections that have not passed their hello yet; more are closed at once, so callers cannot
# use up the listener's descriptors. Each uid has its own share: a caller that sits on its
# connections without a hello (a compromised transport, an operator's stuck script) delays
# only itself, never another account (a transport reconnecting after a restart).
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_UID = 4
# Callers turned away as they connect are logged at most this often (with their number), so
# a local user looping on connect() cannot flood the journal.
TURNED_AWAY_LOG_INTERVAL = 10.0
# Bytes of frames read but not yet taken by `recv`; above this the channel stops reading, so
# the sender's socket fills and its packet batches are dropped there (and counted).
MAX_QUEUED_BYTES = 4 << 20
# Bytes read from one channel per wakeup of the event loop (at least one frame): packets are
# handled as they are read, so the loop's other readers (the router's TUN, where the replies
# to those packets wait in a queue of 500) get their turn between bursts.
READ_BUDGET = 256 << 10
# Decoding limits. A list holds at most MAX_ITEMS entries and a map MAX_MAP_ITEMS; the whole
# frame at most one object per BYTES_PER_OBJECT bytes (plus OBJECT_SLACK), so an empty map or
# a small integer, one byte each, cannot become 64 bytes of Python object apiece. A decoded
# frame then takes at most DECODE_EXPANSION times its encoded size (measured in tests/unit).
MAX_ITEMS = 4096
MAX_MAP_ITEMS = 64
MAX_TEXT = 64 << 10
BYTES_PER_OBJECT = 4
OBJECT_SLACK = 64
DECODE_EXPANSION = 24
# A chunked frame's parts (`send_chunked`): each at most this large, and at most
# MAX_JOINED_ITEMS entries joined in all.
CHUNK_BYTES = 64 << 10
MAX_JOINED_ITEMS = 1 << 20
# Linux socket options Python does not name (asm-generic/socket.h): root may exceed wmem_max.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# Overhead the kernel reserves per Unix datagram out of the send buffer.
_SKB_OVERHEAD = 1024

Frame = dict[str, Any]


class ChannelClosed(AuraError):
    """The other side closed the channel, or it broke (the message says why)."""


class HelloRejected(ChannelClosed):
    """The other side refused the hello: wrong protocol version, or not permitted."""


class NotPermitted(AuraError):
    """The caller's credentials do not allow the role it asked for (the message says why)."""


# Decides the role of a caller from its credentials and the role its hello claims; raises
# NotPermitted to refuse it.
Authorize = Callable[["Credentials", str], str]
# Whether a caller's uid may take any role at all on a listener: asked before its hello is read.
Admits = Callable[["Credentials"], bool]


class FrameTooLarge(ValueError):
    """A frame to send does not fit the channel's limit; split the batch (`send_packets`)."""


class Credentials(NamedTuple):
    pid: int
    uid: int
    gid: int


def encode(frame: Frame) -> bytes:
    return msgpack.packb(frame, use_bin_type=True)


class _OverBudget(Exception):
    pass


def decode(data: bytes | memoryview) -> Frame:
    """One frame, with limits so hostile input costs little; ValueError when it is not one.

    msgpack itself bounds each string, byte string, list and map, and nesting (1024 deep);
    the hooks count every object as its container completes and stop the decoder once the
    frame holds more than its size allows, so no frame expands beyond DECODE_EXPANSION.
    """
    budget = len(data) // BYTES_PER_OBJECT + OBJECT_SLACK
    used = 0

    def list_hook(items: list[Any]) -> list[Any]:
        nonlocal used
        used += 1 + len(items)
        if used > budget:
            raise _OverBudget
        return items

    def object_hook(mapping: dict[str, Any]) -> dict[str, Any]:
        nonlocal used
        used += 1 + 2 * len(mapping)
        if used > budget:
            raise _OverBudget
        return mapping

    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_TEXT,
            max_bin_len=MAX_FRAME,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_MAP_ITEMS,
            max_ext_len=0,
            list_hook=list_hook,
            object_hook=object_hook,
        )
    except _OverBudget:
        raise ValueError(
            f"frame of {len(data)} bytes holds more than {budget} objects"
        ) from None
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise ValueError("frame is not a map with a string 't'")
    return frame


# -- frame shapes --------------------------------------------------------------------------
# What a receiver relies on, per frame type: a map from field to a Shape. A Shape is a type
# or tuple of types (isinstance), a one-element list (a list of that shape), a dict (a map
# with at least those fields) or a predicate. Unknown frame types and extra fields pass: the
# receiver ignores or refuses them itself.
Shape = Any


def _key(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 32


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _packet_batches(value: object) -> bool:
    """`pkts`'s `batches`: a list of [peer name, list of packets] pairs."""
    if not isinstance(value, list):
        return False
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list)):
            return False
        for packet in entry[1]:
            if type(packet) is not bytes:
                return False
    return True


def _index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32


def _sized(size: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, bytes) and len(value) == size


def _record(*fields: Callable[[object], bool]) -> Callable[[object], bool]:
    """A list of exactly these fields, in order."""
    return lambda value: (isinstance(value, list) and len(value) == len(fields)
                          and all(check(item) for check, item in zip(fields, value, strict=True)))


def _text(value: object) -> bool:
    return isinstance(value, str)


_PEER = {"name": str, "public_key": _key}
# transport -> router: [local index, initiation]; router -> transport: [local index, peer's
# public key, response (zero macs), sending key, receiving key, initiator's index, ticket] or
# [local index, why refused].
_HANDSHAKE_REQUEST = _record(_index, _sized(INITIATION_SIZE))
_HANDSHAKE_ANSWER = _record(_index, _key, _sized(RESPONSE_SIZE), _key, _key, _index,
                            _sized(TICKET_SIZE))
_HANDSHAKE_REFUSAL = _record(_index, _text)
ROUTER_FRAMES: dict[str, dict[str, Shape]] = {
    "error": {"message": str},
    "peers": {"peers": [_PEER]},
    "hs": {"items": [_HANDSHAKE_REQUEST]},
    "hs_done": {"answers": [_HANDSHAKE_ANSWER], "refused": [_HANDSHAKE_REFUSAL]},
    "session_up": {"peer": str, "endpoint": str, "handshake_at": _number, "ticket": bytes},
    "session_down": {"peer": str},
    "pkts": {"at": _number, "batches": _packet_batches},
    "status_reply": {"uptime": _number, "transports": [dict], "peers": [{"name": str}]},
}


def shape_problem(frame: Frame, shapes: dict[str, dict[str, Shape]]) -> str | None:
    """What is wrong with `frame` for a receiver expecting `shapes`, or None."""
    fields = shapes.get(frame["t"])
    if fields is None:
        return None
    for name, shape in fields.items():
        if name not in frame:
            return f"{frame['t']} frame without {name!r}"
        if not _matches(frame[name], shape):
            return f"{frame['t']} frame with a malformed {name!r}"
    return None


def _matches(value: object, shape: Shape) -> bool:
    if isinstance(shape, list):
        return isinstance(value, list) and all(_matches(item, shape[0]) for item in value)
    if isinstance(shape, dict):
        return isinstance(value, dict) and all(
            key in value and _matches(value[key], inner) for key, inner in shape.items()
        )
    if isinstance(shape, type | tuple):
        return isinstance(value, shape)
    return bool(shape(value))


def peer_credentials(sock: socket.socket) -> Credentials:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Credentials(*struct.unpack("3i", raw))


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


class Channel:
    """One connected SEQPACKET socket carrying frames.

    `role` is the *other* side's role: on a listener, the one its `authorize` decided from
    SO_PEERCRED; on a connecting side, the one the listener announced.
    """

    def __init__(self, sock: socket.socket, role: str = "") -> None:
        sock.setblocking(False)
        _tune_buffers(sock)
        self.sock = sock
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
        self._queue: collections.deque[tuple[Frame, int]] = collections.deque()
        self._queued_bytes = 0
        # Set by the receiver before its first `recv`: frames of these types are checked.
        self.shapes: dict[str, dict[str, Shape]] | None = None
        # Set by a receiver of packets: `pkts` frames' batches go here, from the reader
        # callback itself while no other frame waits before them (no turn of the event loop
        # between socket and handler), else in order from `recv`.
        self.on_packets: Callable[[list[tuple[str, list[bytes]]]], None] | None = None
        self._parts: Frame | None = None  # a chunked frame being joined
        self._waiter: asyncio.Future[None] | None = None
        self._writer_waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._closed_reason: str | None = None
        self._send_lock = asyncio.Lock()
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
        return self._queued_bytes

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
            if self._queued_bytes >= MAX_QUEUED_BYTES:
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
                frame = decode(self._view[:size])
            except ValueError as exc:
                log.warning("%r sent a bad frame (%s); closing the channel", self, exc)
                self._abort("undecodable frame")
                break
            budget -= size
            if self.on_packets is not None and not self._queue and frame["t"] == "pkts":
                # Nothing waits before it: handled now, not a turn of the loop later.
                self._deliver_now(frame)
                if self.closed:
                    break
                continue
            self._queue.append((frame, size))
            self._queued_bytes += size
        self._wake()

    def _deliver_now(self, frame: Frame) -> None:
        assert self.on_packets is not None
        try:
            accepted = self._accept(frame)
        except ChannelClosed:
            return  # logged and closed
        if accepted is None:
            return
        try:
            self.on_packets(accepted["batches"])
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

    def _take(self) -> Frame:
        frame, size = self._queue.popleft()
        self._queued_bytes -= size
        if self._queued_bytes < MAX_QUEUED_BYTES // 2:
            self._start_reading()
        return frame

    async def recv(self) -> Frame:
        """The next frame (a chunked one joined); raises ChannelClosed once the channel is
        closed and drained, or after a frame of the wrong shape (logged, channel closed).
        With `on_packets` set, `pkts` frames go there instead, in order with the others."""
        while True:
            await self._wait_for_frames()
            frame = self._accept(self._take())
            if frame is not None and not self._packets_handled(frame):
                return frame

    async def recv_many(self) -> list[Frame]:
        """Every frame read so far (at least one), for batch processing."""
        while True:
            await self._wait_for_frames()
            frames = []
            while self._queue:
                frame = self._accept(self._take())
                if frame is not None and not self._packets_handled(frame):
                    frames.append(frame)
            if frames:
                return frames

    def _packets_handled(self, frame: Frame) -> bool:
        if self.on_packets is None or frame["t"] != "pkts":
            return False
        self.on_packets(frame["batches"])
        return True

    def _accept(self, frame: Frame) -> Frame | None:
        """`frame` checked, or joined with earlier parts; None while parts are missing."""
        if "chunk" in frame:
            joined = self._join(frame)
            if joined is None:
                return None
            frame = joined
        problem = None if self.shapes is None else shape_problem(frame, self.shapes)
        if problem is not None:
            log.warning("%r sent a %s; closing the channel", self, problem)
            self._abort(problem)
            raise ChannelClosed(problem)
        if frame["t"] == "pkts" and self.shapes is not None:  # a router link: `at` checked
            self._police(frame)
        return frame

    def _police(self, frame: Frame) -> None:
        """CoDel at dequeue: while frames keep waiting over its target, drop the head packet.

        An in-tunnel control payload (first byte no IP version) is never dropped: it carries
        a client's address and manifest, sent once per handshake.
        """
        now = time.monotonic()
        if self.aqm.should_drop(now - frame["at"], now):
            for _, packets in frame["batches"]:
                if packets and packets[0][:1] and packets[0][0] >> 4 in (4, 6):
                    del packets[0]
                    self.delay_dropped += 1
                    return

    def _join(self, part: Frame) -> Frame | None:
        key, end = part.get("chunk"), part.get("end")
        items = part.get(key) if isinstance(key, str) else None
        joined = self._parts
        if not isinstance(key, str) or not isinstance(items, list) or not isinstance(end, bool) or (
            joined is not None and (joined["t"] != part["t"] or joined["chunk"] != key)
        ):
            problem = f"malformed part of a chunked {part['t']} frame"
        elif joined is not None and len(joined[key]) + len(items) > MAX_JOINED_ITEMS:
            problem = f"chunked {part['t']} frame of more than {MAX_JOINED_ITEMS} entries"
        else:
            if joined is None:
                self._parts = joined = part
            else:
                joined[key].extend(items)
            if not end:
                return None
            self._parts = None
            del joined["chunk"], joined["end"]
            return joined
        log.warning("%r sent a %s; closing the channel", self, problem)
        self._abort(problem)
        raise ChannelClosed(problem)

    # -- sending -----------------------------------------------------------------------

    def _encode_checked(self, frame: Frame) -> bytes:
        data = encode(frame)
        if len(data) > self.max_frame:
            raise FrameTooLarge(f"frame of {len(data)} bytes over the limit of {self.max_frame}")
        return data

    def send(self, frame: Frame) -> bool:
        """Send without waiting. False when the socket is full (counted in `dropped`) or closed."""
        if self.closed:
            return False
        data = self._encode_checked(frame)
        if self._send_lock.locked():
            # A reliable frame is waiting for room; do not overtake it.
            self.dropped += 1
            return False
        return self._send_now(data)

    def _send_now(self, data: bytes) -> bool:
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
                        ok = self.send(packets_frame(frame, at)) and ok
                        frame, size = [], 0
                    current = []
                    frame.append((peer, current))
                    size += head
                current.append(packet)
                size += cost
        if frame:
            ok = self.send(packets_frame(frame, at)) and ok
        return ok

    async def send_reliable(self, frame: Frame) -> None:
        """Send, waiting for room in the socket. Raises ChannelClosed if the channel breaks."""
        data = self._encode_checked(frame)
        async with self._send_lock:
            await self._send_waiting(data)

    async def send_chunked(self, frame: Frame, key: str) -> None:
        """Send `frame` whose list `frame[key]` may outgrow one frame, in parts that `recv`
        on the other side joins back into one frame.

        Each part repeats the other fields, carries a slice of the list, `chunk` (= key) and
        `end` (True on the last part), and encodes to at most CHUNK_BYTES. The parts go out
        under the send lock, so no other frame sent with `send_reliable` or `send` comes
        between them.
        """
        head = {name: value for name, value in frame.items() if name != key}
        budget = min(CHUNK_BYTES, self.max_frame) - len(encode({**head, key: [], "chunk": key,
                                                                "end": False}))
        parts: list[list[Any]] = [[]]
        size = 0
        for item in frame[key]:
            cost = len(encode(item))
            if parts[-1] and (size + cost > budget or len(parts[-1]) >= MAX_ITEMS):
                parts.append([])
                size = 0
            parts[-1].append(item)
            size += cost
        async with self._send_lock:
            for index, items in enumerate(parts):
                end = index == len(parts) - 1
                await self._send_waiting(
                    self._encode_checked({**head, key: items, "chunk": key, "end": end})
                )

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
        self._wake()
        self.sock.close()

    def _abort(self, reason: str) -> None:
        """Close after a protocol violation, telling the other side why (best effort)."""
        with contextlib.suppress(OSError):
            self.sock.send(encode({"t": "error", "message": reason}))
        self._fail(reason)

    def close(self) -> None:
        self._fail("closed")


def packets_frame(batches: Sequence[tuple[str, Sequence[bytes]]], at: float | None = None
                  ) -> Frame:
    """A `pkts` frame: (peer, packets) pairs, sent at `at` (monotonic; default now)."""
    return {"t": "pkts", "at": time.monotonic() if at is None else at, "batches": batches}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- connecting ----------------------------------------------------------------------------


async def _expect_hello(channel: Channel) -> Frame:
    try:
        frame = await asyncio.wait_for(channel.recv(), HELLO_TIMEOUT)
    except TimeoutError:
        channel.close()
        raise HelloRejected(f"no hello within {HELLO_TIMEOUT:.0f} s") from None
    if frame["t"] == "error":
        channel.close()
        raise HelloRejected(f"refused: {frame.get('message')}")
    if frame["t"] != "hello" or not isinstance(frame.get("role"), str):
        channel._abort("expected a hello frame first")
        raise HelloRejected(f"expected a hello frame, got {frame['t']!r}")
    if frame.get("v") != PROTOCOL_VERSION:
        channel._abort(f"protocol version {PROTOCOL_VERSION} required")
        raise HelloRejected(
            f"protocol version mismatch: ours {PROTOCOL_VERSION}, theirs {frame.get('v')!r}"
        )
    channel.role = frame["role"]
    return frame


async def connect(path: str | os.PathLike[str], role: str) -> Channel:
    """Connect to a listener, exchange hellos, and return the channel.

    Raises OSError when nothing listens at `path`, HelloRejected when the listener refuses.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, os.fspath(path))
        channel = Channel(sock)
    except BaseException:
        sock.close()
        raise
    try:
        await channel.send_reliable({"t": "hello", "v": PROTOCOL_VERSION, "role": role})
        await _expect_hello(channel)
    except BaseException:
        channel.close()
        raise
    return channel


class Listener:
    """Accepts channels on a Unix socket path (or a socket systemd passed us)."""

    def __init__(
        self,
        sock: socket.socket,
        path: str | None,
        on_channel: Callable[[Channel], Awaitable[None]],
        authorize: Authorize,
        admits: Admits,
        role: str,
    ) -> None:
        self.sock = sock
        self.path = path
        self.role = role
        self._on_channel = on_channel
        self._authorize = authorize
        self._admits = admits
        self._unauthenticated: collections.Counter[int] = collections.Counter()  # by uid
        self.refused = 0
        self._turned_away = 0  # since the last line about them
        self._turned_away_logged = -TURNED_AWAY_LOG_INTERVAL
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(sock.fileno(), self._accept_ready)

    @classmethod
    async def start(
        cls,
        where: str | os.PathLike[str] | socket.socket,
        on_channel: Callable[[Channel], Awaitable[None]],
        authorize: Authorize,
        admits: Admits,
        *,
        role: str = "router",
        group: int | None = None,
        mode: int = 0o660,
    ) -> Listener:
        """Listen at a path (`mode`, owned by `group` if given) or on a bound socket.

        A socket file left by a process that died is replaced; one a live process still
        listens on is not (AuraError).
        """
        if isinstance(where, socket.socket):
            sock, path = where, None
        else:
            path = os.fspath(where)
            sock = bind_path(path, group, mode)
        sock.setblocking(False)
        return cls(sock, path, on_channel, authorize, admits, role)

    def _accept_ready(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: log, and let the next readiness event retry.
                log.error("accept on %s failed: %s", self.path or "activated socket", exc)
                return
            try:
                caller = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if not self._admits(caller):
                self._turn_away(conn, caller, "permission denied: this account may not "
                                "connect here")
            elif self._unauthenticated[caller.uid] >= MAX_UNAUTHENTICATED_PER_UID:
                self._turn_away(conn, caller, f"uid {caller.uid} has "
                                f"{MAX_UNAUTHENTICATED_PER_UID} connections waiting for "
                                "their hello already")
            elif self._unauthenticated.total() >= MAX_UNAUTHENTICATED:
                self._turn_away(conn, caller, "too many connections waiting for their hello")
            else:
                self._unauthenticated[caller.uid] += 1
                task = self._loop.create_task(self._serve(conn, caller.uid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _turn_away(self, conn: socket.socket, caller: Credentials, why: str) -> None:
        """Close a connection as it is accepted, nothing of it read; say why if it listens."""
        self.refused += 1
        with contextlib.suppress(OSError):
            conn.send(encode({"t": "error", "message": why}), socket.MSG_DONTWAIT)
        conn.close()
        self._turned_away += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= TURNED_AWAY_LOG_INTERVAL:
            log.warning("turned away %d connection(s) on %s, the last from pid %d (uid %d, "
                        "gid %d): %s", self._turned_away, self.path or self.role, caller.pid,
                        caller.uid, caller.gid, why)
            self._turned_away, self._turned_away_logged = 0, now

    async def _serve(self, conn: socket.socket, uid: int) -> None:
        try:
            channel = await self._authenticate(conn)
        finally:
            self._unauthenticated[uid] -= 1
            if not self._unauthenticated[uid]:
                del self._unauthenticated[uid]
        if channel is None:
            return
        try:
            await self._on_channel(channel)
        except ChannelClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r: handler failed", channel)
        finally:
            channel.close()

    async def _authenticate(self, conn: socket.socket) -> Channel | None:
        """Read the hello, decide the caller's role from its credentials, and answer."""
        try:
            channel = Channel(conn)
        except OSError as exc:
            log.warning("dropping a connection that broke at once: %s", exc)
            conn.close()
            return None
        try:
            hello = await _expect_hello(channel)
            c = channel.peer_credentials
            try:
                channel.role = self._authorize(c, hello["role"])
            except NotPermitted as refused:
                self.refused += 1
                log.warning(
                    "refused pid %d (uid %d, gid %d) as %s on %s: %s",
                    c.pid, c.uid, c.gid, hello["role"], self.path or self.role, refused,
                )  # fmt: skip
                channel._abort(f"permission denied: {refused}")
                return None
            await channel.send_reliable({"t": "hello", "v": PROTOCOL_VERSION, "role": self.role})
        except ChannelClosed as exc:
            log.warning("%r: bad hello: %s", channel, exc)
            channel.close()
            return None
        except BaseException:
            channel.close()
            raise
        return channel

    async def close(self) -> None:
        """Stop accepting, close every channel's handler, and remove our socket file."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def bind_path(path: str, group: int | None, mode: int) -> socket.socket:
    """A listening SEQPACKET socket at `path` with `mode`, its group `group` if given."""
    # /run is emptied at boot; without systemd's RuntimeDirectory= nobody else recreates it.
    # Others need to traverse the directory; the socket's own mode decides who connects.
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        # The mode comes from the umask at bind(), and the group is set on the path without
        # following a link: the runtime directory may belong to a service account, which could
        # swap the socket for a symlink between our calls.
        umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(umask)
        if group is not None:
            os.chown(path, -1, group, follow_symlinks=False)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AuraError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AuraError(f"{path} exists and is not a socket; remove it or change runtime_dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # backlog full: very much alive
            raise AuraError(f"another process is already listening on {path}") from None
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EPROTOTYPE):
            raise AuraError(f"{path}: cannot tell whether it is in use ({exc.strerror})") from None
    else:
        raise AuraError(f"another process is already listening on {path}")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
