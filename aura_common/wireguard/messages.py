"""The four WireGuard message layouts, with strict size, type and reserved-byte checks.

The first four bytes are read as one little-endian word: type in byte 0, reserved bytes 1-3
must be zero, so any nonzero reserved byte yields a word that matches no message type.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, Self

from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)

TYPE_WORD = struct.Struct("<I")
TRANSPORT_HEADER = struct.Struct("<IIQ")
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")

INITIATION_MAC1_OFFSET = 116
RESPONSE_MAC1_OFFSET = 60
MAC_SIZE = 16


class MessageError(ValueError):
    """A datagram that is not a well-formed message of the expected type."""


def _check(data: bytes, size: int, message_type: int, name: str) -> None:
    if len(data) != size:
        raise MessageError(f"{name} of {len(data)} bytes, expected {size}")
    if TYPE_WORD.unpack_from(data)[0] != message_type:
        raise MessageError(f"{name} with bad type or nonzero reserved bytes")


class Initiation(NamedTuple):
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check(data, INITIATION_SIZE, MESSAGE_INITIATION, "initiation")
        return cls(*_INITIATION.unpack(data)[1:])

    def pack(self) -> bytes:
        return _INITIATION.pack(MESSAGE_INITIATION, *self)


class Response(NamedTuple):
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check(data, RESPONSE_SIZE, MESSAGE_RESPONSE, "response")
        return cls(*_RESPONSE.unpack(data)[1:])

    def pack(self) -> bytes:
        return _RESPONSE.pack(MESSAGE_RESPONSE, *self)


class CookieReply(NamedTuple):
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    @classmethod
    def unpack(cls, data: bytes) -> Self:
        _check(data, COOKIE_REPLY_SIZE, MESSAGE_COOKIE_REPLY, "cookie reply")
        return cls(*_COOKIE_REPLY.unpack(data)[1:])

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, *self)
