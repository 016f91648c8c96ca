"""Reading a TLS ClientHello before any TLS happens, so non-Aura flows keep their raw bytes.

I/O-free: a `ClientHelloReader` is fed what a connection sends, one read at a time, and says
whether more is needed, whether the bytes are a ClientHello (with its ALPN offers and server
name), or why they are not. The handshake message may span several TLS records.

A client controls how its bytes are cut into records and reads, so the cost of reading must not
depend on it: each byte is looked at once, records are reassembled as they arrive, and the
ClientHello body is parsed once, when complete. The bytes a client may send before a verdict
are bounded whatever the record sizes: the ClientHello (MAX_CLIENT_HELLO) in at most
MAX_RECORDS records, so a verdict comes within MAX_CLIENT_HELLO + MAX_RECORDS * RECORD_HEADER
bytes.

`wanted` says how many more bytes could complete the ClientHello, so that the connection need
not be woken before they are there (SO_RCVLOWAT): a client that trickles its bytes wakes the
server a few times in all, not once per write.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
RECORD_HEADER = 5
HANDSHAKE_HEADER = 4
HANDSHAKE_CLIENT_HELLO = 0x01
EXTENSION_SERVER_NAME = 0
EXTENSION_ALPN = 16
MAX_RECORD = 16384 + 2048  # TLSPlaintext limit plus the slack some stacks use
# Real ClientHellos, post-quantum key shares and padding included, stay below 4 KiB.
MAX_CLIENT_HELLO = 16384
# TLS stacks send a ClientHello in one record, two for the largest; tools that cut it to hide
# the server name from filters use a few dozen. Beyond this it is no Aura client's (ours sends
# one), and each record costs a turn of the reader: past it, the fallback chain takes the flow.
MAX_RECORDS = 64
# The smallest ClientHello: version, random, empty session id, one suite, one compression
# method, with its handshake header.
MIN_CLIENT_HELLO = HANDSHAKE_HEADER + 2 + 32 + 1 + 4 + 2


@dataclass(frozen=True, slots=True)
class ClientHello:
    alpn: tuple[bytes, ...]
    server_name: str | None


@dataclass(frozen=True, slots=True)
class NotClientHello:
    reason: str


Verdict = ClientHello | NotClientHello


class _Malformed(Exception):
    pass


class _Reader:
    __slots__ = ("data", "position")

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise _Malformed("truncated")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> _Reader:
        return _Reader(self.take(self.number(length_size)))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.position


class ClientHelloReader:
    """Sorts a connection's first bytes, fed a read at a time, in time linear in their number.

    `feed` returns None while the bytes so far are a valid but incomplete ClientHello, and the
    verdict once there is one; feed nothing after that. `received` holds every byte fed, for
    whoever takes the connection over (the TLS stack or the fallback chain).
    """

    __slots__ = ("_chunks", "_handshake", "_header", "_needed", "_record_left", "_records")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._header = bytearray()  # the record header being read
        self._record_left = 0  # payload bytes of the current record still to come
        self._handshake = bytearray()  # the handshake layer, reassembled from record payloads
        self._needed: int | None = None  # the ClientHello's size with its header, once known
        self._records = 0

    @property
    def received(self) -> bytes:
        return b"".join(self._chunks)

    @property
    def wanted(self) -> int:
        """The fewest more bytes that could complete the ClientHello (a record header counted
        only when one is due). Fewer could bring a verdict only by starting a malformed record:
        such a client then waits for its refusal until it sends more, closes, or meets the
        handshake deadline."""
        missing = (self._needed or MIN_CLIENT_HELLO) - len(self._handshake)
        if not self._record_left:
            missing += RECORD_HEADER - len(self._header)
        return max(1, missing)

    def feed(self, data: bytes) -> Verdict | None:
        if not data:
            return None
        first = not self._chunks
        self._chunks.append(data)
        if first and data[0] != RECORD_HANDSHAKE:
            return NotClientHello("not TLS")
        position, size = 0, len(data)
        while position < size:
            if self._record_left:
                end = min(size, position + self._record_left)
                self._record_left -= end - position
                verdict = self._handshake_bytes(data[position:end])
                position = end
            else:
                end = min(size, position + RECORD_HEADER - len(self._header))
                self._header += data[position:end]
                position = end
                verdict = self._record_header() if len(self._header) == RECORD_HEADER else None
            if verdict is not None:
                return verdict
        return None

    def _record_header(self) -> NotClientHello | None:
        header, self._header = self._header, bytearray()
        if header[0] != RECORD_HANDSHAKE:
            return NotClientHello("not a TLS handshake record")
        if header[1] != 3:
            return NotClientHello("not a TLS record version")
        length = (header[3] << 8) | header[4]
        if length == 0 or length > MAX_RECORD:
            return NotClientHello("bad TLS record length")
        self._records += 1
        if self._records > MAX_RECORDS:
            return NotClientHello(f"ClientHello in more than {MAX_RECORDS} records")
        self._record_left = length
        return None

    def _handshake_bytes(self, fragment: bytes) -> Verdict | None:
        handshake = self._handshake
        handshake += fragment
        if self._needed is None:
            if len(handshake) < HANDSHAKE_HEADER:
                return None
            if handshake[0] != HANDSHAKE_CLIENT_HELLO:
                return NotClientHello("first handshake message is not a ClientHello")
            self._needed = HANDSHAKE_HEADER + int.from_bytes(handshake[1:4], "big")
            if self._needed > MAX_CLIENT_HELLO:
                return NotClientHello("ClientHello too large")
        if len(handshake) < self._needed:
            return None
        try:
            return _parse_body(_Reader(bytes(handshake[HANDSHAKE_HEADER : self._needed])))
        except _Malformed as error:
            return NotClientHello(f"malformed ClientHello: {error}")


def parse_client_hello(data: bytes) -> Verdict | None:
    """The verdict on `data` as one read: None while it is a valid but incomplete ClientHello."""
    return ClientHelloReader().feed(data)


def _parse_body(body: _Reader) -> ClientHello:
    if body.take(1) != b"\x03":
        raise _Malformed("legacy version")
    body.take(1 + 32)
    if len(body.vector(1).data) > 32:
        raise _Malformed("session id longer than 32 bytes")
    suites = body.vector(2)
    if suites.remaining < 2 or suites.remaining % 2:
        raise _Malformed("cipher suites")
    if body.vector(1).remaining < 1:
        raise _Malformed("compression methods")
    alpn: tuple[bytes, ...] = ()
    server_name: str | None = None
    if body.remaining == 0:
        return ClientHello(alpn, server_name)
    extensions = body.vector(2)
    if body.remaining:
        raise _Malformed("bytes after the extensions")
    seen: set[int] = set()
    while extensions.remaining:
        kind = extensions.number(2)
        content = extensions.vector(2)
        if kind in seen:
            raise _Malformed("duplicate extension")
        seen.add(kind)
        if kind == EXTENSION_ALPN:
            alpn = _alpn(content)
        elif kind == EXTENSION_SERVER_NAME:
            server_name = _server_name(content)
    return ClientHello(alpn, server_name)


def _alpn(content: _Reader) -> tuple[bytes, ...]:
    names = content.vector(2)
    if content.remaining or not names.remaining:
        raise _Malformed("ALPN list")
    offers = []
    while names.remaining:
        name = names.vector(1).data
        if not name:
            raise _Malformed("empty ALPN protocol name")
        offers.append(name)
    return tuple(offers)


def _server_name(content: _Reader) -> str | None:
    if not content.remaining:
        return None  # a server's echo form; clients send a list
    names = content.vector(2)
    if content.remaining:
        raise _Malformed("server name list")
    while names.remaining:
        kind = names.number(1)
        name = names.vector(2).data
        if kind == 0:
            try:
                return name.decode("ascii")
            except UnicodeDecodeError:
                raise _Malformed("server name is not ASCII") from None
    return None
