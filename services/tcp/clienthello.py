"""Reading a TLS ClientHello before any TLS happens, so non-Aura flows keep their raw bytes.

I/O-free: `parse_client_hello(data)` looks at the bytes a connection sent so far and says
whether more are needed, whether they are a ClientHello (with its ALPN offers and server
name), or why they are not. The handshake message may span several TLS records.
"""

from __future__ import annotations

from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 0x01
EXTENSION_SERVER_NAME = 0
EXTENSION_ALPN = 16
MAX_RECORD = 16384 + 2048  # TLSPlaintext limit plus the slack some stacks use
MAX_CLIENT_HELLO = 65536  # far above any real one; larger is not worth buffering


@dataclass(frozen=True, slots=True)
class ClientHello:
    alpn: tuple[bytes, ...]
    server_name: str | None


@dataclass(frozen=True, slots=True)
class NotClientHello:
    reason: str


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


def _handshake_bytes(data: bytes) -> bytes | NotClientHello | None:
    """The handshake layer reassembled from records, once the first message is complete."""
    fragments: list[bytes] = []
    collected, position = 0, 0
    while True:
        if len(data) - position < 5:
            return None
        if data[position] != RECORD_HANDSHAKE:
            return NotClientHello("not a TLS handshake record")
        if data[position + 1] != 3:
            return NotClientHello("not a TLS record version")
        length = (data[position + 3] << 8) | data[position + 4]
        if length == 0 or length > MAX_RECORD:
            return NotClientHello("bad TLS record length")
        end = position + 5 + length
        if end > len(data):
            return None
        fragments.append(data[position + 5 : end])
        collected += length
        position = end
        if collected >= 4:
            head = fragments[0] if len(fragments[0]) >= 4 else b"".join(fragments)
            if head[0] != HANDSHAKE_CLIENT_HELLO:
                return NotClientHello("first handshake message is not a ClientHello")
            needed = 4 + int.from_bytes(head[1:4], "big")
            if needed > MAX_CLIENT_HELLO:
                return NotClientHello("ClientHello too large")
            if collected >= needed:
                return b"".join(fragments)[:needed]


def parse_client_hello(data: bytes) -> ClientHello | NotClientHello | None:
    """None while `data` is a valid but incomplete ClientHello; otherwise the verdict."""
    if not data:
        return None
    if data[0] != RECORD_HANDSHAKE:
        return NotClientHello("not TLS")
    handshake = _handshake_bytes(data)
    if not isinstance(handshake, bytes):
        return handshake
    try:
        return _parse_body(_Reader(handshake[4:]))
    except _Malformed as error:
        return NotClientHello(f"malformed ClientHello: {error}")


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
