"""The IPC protocol: every frame Aura processes exchange, and its encoding (the spec).

A frame is a msgpack map whose key `t` names it; its other keys are the fields of one frozen
dataclass below. A nested record is a map (`@record(as_list=False)`) or, where a frame holds
many of them, a list of its fields in order. docs/architecture.md lists the same frames
(tests/unit/test_ipc_docs.py holds the two together).

Frames come from another process, which may be compromised, so `decode` checks every field's
type and bound and raises ProtocolError for anything else: a receiver gets a frame of a type
it expects (`Protocol`, one per direction of each socket) with fields as declared, or none.
Decoding is bounded first (`read_map`): at most MAX_FRAME bytes, msgpack's length limits and
an object budget, so a frame takes at most DECODE_EXPANSION times its size in memory.

A frame whose list may outgrow one frame (`CHUNKED`) is sent in parts (`encode_parts`), each
with the other fields repeated, a slice of the list, `chunk` (the list's name) and `end`;
`Joiner` puts them together again.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import msgpack

from aura_common.pki.manifest import (
    MAX_BODY_BYTES,
    MAX_ENDPOINTS,
    MAX_EXPIRES_DAYS,
    MAX_SERIAL,
    HostPorts,
)
from aura_common.wireguard.authority import TICKET_SIZE
from aura_common.wireguard.constants import INITIATION_SIZE, RESPONSE_SIZE

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
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
# A chunked frame's parts: each at most this large, and at most MAX_JOINED_ITEMS entries and
# MAX_JOINED_BYTES of parts (as received) joined in all.
CHUNK_BYTES = 64 << 10
MAX_JOINED_ITEMS = 1 << 20
MAX_JOINED_BYTES = 128 << 20
# A record's own check may quote the value it refused; this much of its reason is kept.
MAX_REASON = 200


class ProtocolError(ValueError):
    """Bytes that are not a frame this receiver accepts (the message says which field)."""


# -- bounds, written into the field types ---------------------------------------------------
@dataclass(frozen=True)
class Size:
    """bytes, a string (in characters) or a list of exactly this length, or of at most it."""

    length: int
    exact: bool = True


@dataclass(frozen=True)
class Range:
    """an integer in [low, high)."""

    low: int
    high: int


U32 = Annotated[int, Range(0, 1 << 32)]
Key = Annotated[bytes, Size(32)]
Initiation = Annotated[bytes, Size(INITIATION_SIZE)]
Response = Annotated[bytes, Size(RESPONSE_SIZE)]
Ticket = Annotated[bytes, Size(TICKET_SIZE)]
# A session's ticket as a transport holds it: empty for keys that came without one.
HeldTicket = Annotated[bytes, Size(TICKET_SIZE, exact=False)]
# (peer, IP packets) pairs of a `pkts` frame.
Batches = list[tuple[str, list[bytes]]]
Count = Annotated[int, Range(0, 1 << 64)]
Text = Annotated[str, Size(256, exact=False)]  # a name or address shown to the operator


# -- frames ---------------------------------------------------------------------------------
class Frame:
    """A frame: a frozen dataclass whose TAG is its `t`."""

    __slots__ = ()
    TAG: ClassVar[str]
    # The list field that may outgrow one frame: sent in parts (`encode_parts`).
    CHUNKED: ClassVar[str | None] = None


F = TypeVar("F", bound=Frame)
R = TypeVar("R")
_RECORD_AS_LIST: dict[type, bool] = {}


def frame(tag: str, chunked: str | None = None) -> Callable[[type[F]], type[F]]:
    def register(cls: type[F]) -> type[F]:
        cls.TAG = tag
        cls.CHUNKED = chunked
        return cls

    return register


def record(as_list: bool) -> Callable[[type[R]], type[R]]:
    """A nested record: on the wire a list of its fields in order, or a map."""

    def register(cls: type[R]) -> type[R]:
        _RECORD_AS_LIST[cls] = as_list
        return cls

    return register


@frame("hello")
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    v: int  # PROTOCOL_VERSION
    role: str  # the sender's role: a transport, admin, router, signer or client


@frame("error")
@dataclass(frozen=True, slots=True)
class Error(Frame):
    message: str  # why; the sender closes after it


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class PeerKey:
    name: str
    public_key: Key
    # The authority's MAC over the peer's keys (`HandshakeAuthority.keys_tag`): a transport
    # drops the peer's session keys when it changes. Empty for a key the authority refused.
    keys: Annotated[bytes, Size(16, exact=False)]


@frame("peers", chunked="peers")
@dataclass(frozen=True, slots=True)
class Peers(Frame):
    peers: list[PeerKey]


@record(as_list=True)
@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    local_index: U32  # the transport's, unique in its device
    initiation: Initiation  # mac1 checked


@frame("hs")
@dataclass(frozen=True, slots=True)
class Handshakes(Frame):
    items: list[HandshakeRequest]


@record(as_list=True)
@dataclass(frozen=True, slots=True)
class HandshakeAnswer:
    local_index: U32
    peer_public_key: Key
    response: Response  # zero macs: the transport adds them
    sending_key: Key
    receiving_key: Key
    initiator_index: U32
    ticket: Ticket


@record(as_list=True)
@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    local_index: U32
    reason: str
    # The initiation did not authenticate (no key the router knows made it): its source is to
    # blame. False: a replay, one too soon, or no room for it.
    unauthenticated: bool


@frame("hs_done")
@dataclass(frozen=True, slots=True)
class HandshakesDone(Frame):
    answers: list[HandshakeAnswer]
    refused: list[HandshakeRefusal]


@frame("session_up")
@dataclass(frozen=True, slots=True)
class SessionUp(Frame):
    peer: str
    endpoint: str  # host:port
    handshake_at: float  # Unix time
    ticket: HeldTicket


@frame("session_down")
@dataclass(frozen=True, slots=True)
class SessionDown(Frame):
    peer: str


@frame("pkts")
@dataclass(frozen=True, slots=True)
class Packets(Frame):
    at: float  # send time, monotonic (the clock the processes share)
    batches: Batches


@frame("status")
@dataclass(frozen=True, slots=True)
class Status(Frame):
    pass


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class TransportState:
    name: str
    connected: bool
    bound: list[str]  # host:port


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class PeerState:
    """A peer as `aura status` shows it; the session's fields are set while it is connected."""

    name: str
    enabled: bool
    address: list[str]
    connected: bool
    usage_bytes: int
    quota_bytes: int | None
    expires: str | None  # ISO 8601 UTC
    refused: str | None  # why the router refuses it now
    refused_since: float | None  # Unix time
    transport: str | None = None
    endpoint: str | None = None  # host:port
    last_handshake: float | None = None  # Unix time
    connected_since: float | None = None  # Unix time
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class DroppedPackets:
    unroutable: Count  # to no peer's address
    spoofed: Count  # from an address not the sending peer's


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class HandshakeCounts:
    answered: Count
    refused: Count
    dropped: Count


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class RegistryState:
    """A cluster's registry database as the router follows it."""

    source: Literal["database", "copy"]  # where the peers served now came from
    connected: bool
    since: float  # Unix time the present state began
    database: str  # the database, without its password


@frame("status_reply", chunked="peers")
@dataclass(frozen=True, slots=True)
class RouterStatus(Frame):
    uptime: float
    tun: str
    transports: list[TransportState]
    peers: list[PeerState]
    dropped: DroppedPackets
    handshakes: HandshakeCounts
    registry: RegistryState | None = None  # None: no cluster


@frame("reload")
@dataclass(frozen=True, slots=True)
class Reload(Frame):
    pass


@frame("reload_reply")
@dataclass(frozen=True, slots=True)
class Reloaded(Frame):
    pass


@frame("manifest_updated")
@dataclass(frozen=True, slots=True)
class ManifestUpdated(Frame):
    pass


@frame("manifest_updated_reply")
@dataclass(frozen=True, slots=True)
class ManifestPushed(Frame):
    pass


# A manifest's endpoint: its own checks (host, at least one port, each 1..65535) run as it
# is decoded. An absent port travels as nil (and may be left out).
record(as_list=False)(HostPorts)


@frame("sign")
@dataclass(frozen=True, slots=True)
class Sign(Frame):
    endpoints: Annotated[list[HostPorts], Size(MAX_ENDPOINTS, exact=False)]
    expires_days: Annotated[int, Range(1, MAX_EXPIRES_DAYS + 1)]
    server_public_key: Key
    serial_above: Annotated[int, Range(0, MAX_SERIAL + 1)] = 0


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class ManifestText:
    """A signed manifest as `manifest.json` holds it (`SignedManifest.to_mapping`); the
    receiver still parses and verifies it."""

    body: Annotated[str, Size(MAX_BODY_BYTES, exact=False)]  # canonical JSON
    signature: Annotated[str, Size(88)]  # base64 of 64 bytes
    key_id: Annotated[str, Size(16)] | None = None


@frame("signed")
@dataclass(frozen=True, slots=True)
class Signed(Frame):
    manifest: ManifestText


class TunnelState(enum.StrEnum):
    """Where the Linux client's tunnel is."""

    CONNECTING = "connecting"  # trying a transport
    BACKOFF = "backoff"  # waiting before the next try
    UP = "up"  # a path carries traffic


@record(as_list=False)
@dataclass(frozen=True, slots=True)
class ClientState:
    """The Linux client as `aura client status` shows it."""

    state: TunnelState
    transport: Text | None  # of the live path
    endpoint: Text | None  # host:port of the live path
    last_handshake: float | None  # Unix time
    rx_packets: Count
    rx_bytes: Count
    tx_packets: Count
    tx_bytes: Count
    addresses: list[Text]
    routes: list[Text]
    dns: list[Text]
    dns_applied_with: Text | None  # the resolver strategy, while DNS is applied
    manifest_serial: Count
    tun: Text | None
    mtu: Annotated[int, Range(0, 1 << 16)] | None
    last_error: str | None
    pid: Annotated[int, Range(1, 1 << 32)]


@frame("status_reply")
@dataclass(frozen=True, slots=True)
class ClientStatus(Frame):
    status: ClientState


@frame("down")
@dataclass(frozen=True, slots=True)
class Down(Frame):
    pass


@frame("down_reply")
@dataclass(frozen=True, slots=True)
class DownDone(Frame):
    pass


class Protocol:
    """The frames one side of a socket accepts, by tag (a hello and an error always)."""

    def __init__(self, name: str, *frames: type[Frame]) -> None:
        self.name = name
        accepted: tuple[type[Frame], ...] = (Hello, Error, *frames)
        self.frames = {cls.TAG: cls for cls in accepted}
        assert len(self.frames) == len(frames) + 2, f"{name}: two frames with one tag"

    def __repr__(self) -> str:
        return f"<Protocol {self.name}>"


# router.sock: what the router reads, and what transports and admin clients read from it.
TO_ROUTER = Protocol("to router", Handshakes, SessionUp, SessionDown, Packets, Status, Reload,
                     ManifestUpdated)
FROM_ROUTER = Protocol("from router", Peers, HandshakesDone, Packets, RouterStatus, Reloaded,
                       ManifestPushed)
# signer.sock
TO_SIGNER = Protocol("to signer", Sign)
FROM_SIGNER = Protocol("from signer", Signed)
# The client's control socket.
TO_CLIENT = Protocol("to client", Status, Down)
FROM_CLIENT = Protocol("from client", ClientStatus, DownDone)


# -- checking fields ------------------------------------------------------------------------
# A check takes a decoded value and returns it as the field holds it, or raises _Bad with
# what was expected; field names are added on the way out.
Check = Callable[[Any], Any]


class _Bad(Exception):
    def __init__(self, expected: str, where: str = "", unknown: bool = False) -> None:
        super().__init__(expected)
        self.expected, self.where, self.unknown = expected, where, unknown

    def text(self, tag: str) -> str:
        if self.unknown:
            return f"{tag}{self.where}: unknown field {self.expected!r}"
        return f"{tag}{self.where}: expected {self.expected}"


def _check_for(hint: Any) -> Check:
    bound = None
    if typing.get_origin(hint) is Annotated:
        hint, bound = hint.__origin__, hint.__metadata__[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bytes:
        return _bytes(bound)
    if hint is int:
        return _int(bound if isinstance(bound, Range) else None)
    if hint is float:
        return _float
    if hint is str:
        return _text(bound)
    if hint is bool:
        return _scalar(bool, "a boolean")
    if origin is Literal:
        return _one_of(args)
    if isinstance(hint, type) and issubclass(hint, enum.StrEnum):
        return _member_of(hint)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _check_for(next(a for a in args if a is not type(None)))
        return lambda value: None if value is None else inner(value)
    if hint == Batches:
        return _batches
    if origin is list:
        return _list(args[0], bound)
    if dataclasses.is_dataclass(hint) and hint in _RECORD_AS_LIST:
        return _nested(hint)
    raise TypeError(f"no wire form for {hint!r}")


def _scalar(kind: type, expected: str) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Bad(expected)
        return value

    return check


def _sized(kind: type[Sized], plain: str, bounded: str, bound: Size | None) -> Check:
    """A `kind` value whose length `bound` limits (else only msgpack's limits); `plain` and
    `bounded` (a format of the length) say what is expected."""
    if bound is None:
        expected, low, high = plain, 0, MAX_FRAME
    elif bound.exact:
        expected, low, high = bounded.format(bound.length), bound.length, bound.length
    else:
        expected, low, high = bounded.format(f"at most {bound.length}"), 0, bound.length

    def check(value: Any) -> Any:
        if type(value) is not kind or not low <= len(value) <= high:
            raise _Bad(expected)
        return value

    return check


def _bytes(bound: Size | None) -> Check:
    return _sized(bytes, "bytes", "{} bytes", bound)


def _text(bound: Size | None) -> Check:
    return _sized(str, "a string", "a string of {} characters", bound)


def _one_of(values: tuple[Any, ...]) -> Check:
    expected = "one of " + ", ".join(map(repr, values))

    def check(value: Any) -> Any:
        if type(value) is not str or value not in values:
            raise _Bad(expected)
        return value

    return check


def _member_of(kind: type[enum.StrEnum]) -> Check:
    """A value of the enum `kind`, sent as its string."""
    expected = "one of " + ", ".join(repr(member.value) for member in kind)

    def check(value: Any) -> Any:
        if type(value) is not str or not any(value == member.value for member in kind):
            raise _Bad(expected)
        return kind(value)

    return check


def _int(bound: Range | None) -> Check:
    low, high = (-(1 << 63), 1 << 64) if bound is None else (bound.low, bound.high)
    expected = "an integer" if bound is None else f"an integer in {low}..{high - 1}"

    def check(value: Any) -> int:
        if type(value) is not int or not low <= value < high:
            raise _Bad(expected)
        return value

    return check


def _float(value: Any) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):
        raise _Bad("a finite number")
    return float(value)


def _list(item: Any, bound: Size | None) -> Check:
    inner = _check_for(item)
    within = _sized(list, "a list", "a list of {} entries", bound)

    def check(value: Any) -> list[Any]:
        within(value)
        out = []
        for index, entry in enumerate(value):
            try:
                out.append(inner(entry))
            except _Bad as bad:
                raise _Bad(bad.expected, f"[{index}]{bad.where}", bad.unknown) from None
        return out

    return check


def _batches(value: Any) -> Batches:
    """`pkts` batches: the data path's hot loop, so written out rather than composed."""
    if type(value) is not list:
        raise _Bad("a list of [peer, [bytes, ...]] pairs")
    pairs = []
    for index, entry in enumerate(value):
        if type(entry) is not list or len(entry) != 2:
            raise _Bad("a [peer, [bytes, ...]] pair", f"[{index}]")
        peer, packets = entry
        if type(peer) is not str or type(packets) is not list:
            raise _Bad("a [peer, [bytes, ...]] pair", f"[{index}]")
        for packet in packets:
            if type(packet) is not bytes:
                raise _Bad("a list of bytes", f"[{index}][1]")
        pairs.append((peer, packets))
    return pairs


class _Fields:
    """How one dataclass's fields are checked and encoded."""

    def __init__(self, cls: type) -> None:
        hints = typing.get_type_hints(cls, include_extras=True)
        self.cls = cls
        # (name, check, required): a field with a default may be left out.
        self.fields = [(f.name, _check_for(hints[f.name]), f.default is dataclasses.MISSING)
                       for f in dataclasses.fields(cls)]
        self.names = frozenset(name for name, _, _ in self.fields)
        # Fields holding records need converting on the way out; the rest go as they are.
        self.nested = [f.name for f in dataclasses.fields(cls) if _holds_record(hints[f.name])]
        # A field whose default is None travels only when set, as peers have always sent a
        # sign request's absent ports, a manifest without key_id or a status without registry.
        self.optional = frozenset(f.name for f in dataclasses.fields(cls) if f.default is None)

    def from_map(self, mapping: dict[str, Any]) -> Any:
        values = {}
        for name, check, required in self.fields:
            if name not in mapping:
                if required:
                    raise _Bad("a value (the field is missing)", f".{name}")
                continue
            try:
                values[name] = check(mapping[name])
            except _Bad as bad:
                raise _Bad(bad.expected, f".{name}{bad.where}", bad.unknown) from None
        for name in mapping:
            if name not in self.names and name != "t":
                raise _Bad(name, unknown=True)
        return self.build(values)

    def from_list(self, items: list[Any]) -> Any:
        if len(items) != len(self.fields):
            raise _Bad(f"a list of {len(self.fields)}")
        values = {}
        for (name, check, _), item in zip(self.fields, items, strict=True):
            try:
                values[name] = check(item)
            except _Bad as bad:
                raise _Bad(bad.expected, f".{name}{bad.where}", bad.unknown) from None
        return self.build(values)

    def build(self, values: dict[str, Any]) -> Any:
        """The record; a record's own checks (its `__post_init__`) refuse with ValueError."""
        try:
            return self.cls(**values)
        except ValueError as error:
            # The reason may quote the value: cut it to keep a hostile one out of the log.
            reason = str(error)
            reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
            raise _Bad(f"a valid {self.cls.__name__} ({reason})") from None


def _holds_record(hint: Any) -> bool:
    if typing.get_origin(hint) is Annotated:
        hint = hint.__origin__
    if hint in _RECORD_AS_LIST:
        return True
    return any(_holds_record(arg) for arg in typing.get_args(hint))


def _nested(cls: type) -> Check:
    spec = _spec(cls)
    if _RECORD_AS_LIST[cls]:
        def from_list(value: Any) -> Any:
            if type(value) is not list:
                raise _Bad(f"a list of {len(spec.fields)}")
            return spec.from_list(value)

        return from_list

    def from_map(value: Any) -> Any:
        if type(value) is not dict:
            raise _Bad("a map")
        return spec.from_map(value)

    return from_map


_SPECS: dict[type, _Fields] = {}


def _spec(cls: type) -> _Fields:
    spec = _SPECS.get(cls)
    if spec is None:
        spec = _SPECS[cls] = _Fields(cls)
    return spec


# -- encoding and decoding ------------------------------------------------------------------
def _wire(value: Any) -> Any:
    """A field's value as msgpack packs it (records become lists or maps)."""
    if type(value) in _RECORD_AS_LIST:
        if _RECORD_AS_LIST[type(value)]:
            return [_wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
        optional = _spec(type(value)).optional
        return {f.name: _wire(item) for f in dataclasses.fields(value)
                if (item := getattr(value, f.name)) is not None or f.name not in optional}
    if isinstance(value, list | tuple):
        return [_wire(item) for item in value]
    if isinstance(value, enum.StrEnum):
        return value.value
    return value


def to_map(frame: Frame) -> dict[str, Any]:
    """The frame as the map it travels as (`t` included)."""
    mapping: dict[str, Any] = {"t": frame.TAG}
    spec = _spec(type(frame))
    for field in dataclasses.fields(frame):  # type: ignore[arg-type]
        value = getattr(frame, field.name)
        if value is None and field.name in spec.optional:
            continue
        mapping[field.name] = _wire(value) if field.name in spec.nested else value
    return mapping


def encode(frame: Frame) -> bytes:
    return msgpack.packb(to_map(frame), use_bin_type=True)


def encode_parts(frame: Frame, limit: int) -> list[bytes]:
    """`frame` in parts of at most `limit` bytes (unless one entry of its CHUNKED list is
    larger), which `Joiner` puts together again; one part when it is not chunked."""
    key = frame.CHUNKED
    if key is None:
        return [encode(frame)]
    mapping = to_map(frame)
    entries = mapping.pop(key)
    # Less 4: the list's header, 1 byte while it is empty, takes up to 5 with entries.
    budget = limit - 4 - len(msgpack.packb({**mapping, key: [], "chunk": key, "end": False},
                                           use_bin_type=True))
    parts: list[list[Any]] = [[]]
    size = 0
    for entry in entries:
        cost = len(msgpack.packb(entry, use_bin_type=True))
        if parts[-1] and (size + cost > budget or len(parts[-1]) >= MAX_ITEMS):
            parts.append([])
            size = 0
        parts[-1].append(entry)
        size += cost
    return [msgpack.packb({**mapping, key: items, "chunk": key, "end": index == len(parts) - 1},
                          use_bin_type=True)
            for index, items in enumerate(parts)]


def packets(batches: Sequence[tuple[str, Sequence[bytes]]], at: float) -> bytes:
    """A `pkts` frame encoded straight from (peer, packets) pairs (the data path's shape)."""
    return msgpack.packb({"t": Packets.TAG, "at": at, "batches": batches}, use_bin_type=True)


class _OverBudget(Exception):
    pass


def read_map(data: bytes | memoryview) -> dict[str, Any]:
    """The msgpack map with a string `t` that `data` holds, within the decoding limits.

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
        mapping = msgpack.unpackb(
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
        raise ProtocolError(
            f"frame of {len(data)} bytes holds more than {budget} objects"
        ) from None
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable frame ({type(exc).__name__}: {exc})") from None
    if not isinstance(mapping, dict) or not isinstance(mapping.get("t"), str):
        raise ProtocolError("frame is not a map with a string 't'")
    return mapping


def from_map(mapping: dict[str, Any], protocol: Protocol) -> Frame:
    """The frame `mapping` is for a receiver of `protocol`; ProtocolError naming the field
    and what it must be otherwise."""
    tag = mapping["t"]
    cls = protocol.frames.get(tag)
    if cls is None:
        raise ProtocolError(f"unexpected frame {tag!r} (this socket takes "
                            f"{', '.join(sorted(protocol.frames))})")
    try:
        return typing.cast(Frame, _spec(cls).from_map(mapping))
    except _Bad as bad:
        raise ProtocolError(bad.text(tag)) from None


def decode(data: bytes | memoryview, protocol: Protocol) -> Frame:
    """One whole (not chunked) frame; ProtocolError when it is not one `protocol` accepts."""
    return from_map(read_map(data), protocol)


class Joiner:
    """Puts the parts of chunked frames (`encode_parts`) together again, one frame at a time.

    Only a frame of `protocol` that is sent in parts (its `CHUNKED` list) may come in parts:
    anything else could keep the joiner holding part after part of a frame that never ends.
    """

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol
        self._joined: dict[str, Any] | None = None
        self._joined_bytes = 0

    def add(self, mapping: dict[str, Any], size: int) -> dict[str, Any] | None:
        """`mapping` itself when it is no part; the joined frame after its last part; None
        while parts are missing. `size` is the part's encoded size. ProtocolError for a
        malformed or oversized part."""
        if "chunk" not in mapping and self._joined is None:
            return mapping
        tag, key, end = mapping["t"], mapping.get("chunk"), mapping.get("end")
        cls = self._protocol.frames.get(tag)
        if cls is None or cls.CHUNKED is None or key != cls.CHUNKED:
            raise ProtocolError(f"a part of a {tag!r} frame, which is not sent in parts "
                                f"(or not its list {key!r})")
        items = mapping.get(key)
        joined = self._joined
        if not isinstance(items, list) or not isinstance(end, bool) or (
            joined is not None and (joined["t"] != tag or joined["chunk"] != key)
        ):
            raise ProtocolError(f"malformed part of a chunked {tag} frame")
        if joined is None:
            self._joined = joined = mapping
            self._joined_bytes = size
        elif len(joined[key]) + len(items) > MAX_JOINED_ITEMS:
            raise ProtocolError(f"chunked {tag} frame of more than {MAX_JOINED_ITEMS} entries")
        else:
            self._joined_bytes += size
            if self._joined_bytes > MAX_JOINED_BYTES:
                raise ProtocolError(f"chunked {tag} frame of more than {MAX_JOINED_BYTES} bytes")
            joined[key].extend(items)
        if not end:
            return None
        self._joined = None
        del joined["chunk"], joined["end"]
        return joined


def fields_of(cls: type) -> list[str]:
    """The field names of a frame or record, in wire order (for docs and tests)."""
    return [f.name for f in dataclasses.fields(cls)]


def wire_form(record: type) -> str:
    """How a record travels: "list" (its fields in order) or "map"."""
    return "list" if _RECORD_AS_LIST[record] else "map"


def records_in(cls: type) -> Iterable[type]:
    """The record types a frame's fields hold."""
    hints = typing.get_type_hints(cls, include_extras=True)
    stack = list(hints.values())
    while stack:
        hint = stack.pop()
        if hint in _RECORD_AS_LIST:
            yield hint
        stack.extend(typing.get_args(hint))
