"""Message layouts: exact sizes, type and reserved-byte checks, fuzzed parsers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_common.wireguard.messages import CookieReply, Initiation, MessageError, Response

INITIATION = Initiation(0x01020304, b"e" * 32, b"s" * 48, b"t" * 28, b"1" * 16, b"2" * 16)
RESPONSE = Response(7, 9, b"e" * 32, b"n" * 16, b"1" * 16, b"2" * 16)
COOKIE_REPLY = CookieReply(9, b"n" * 24, b"c" * 32)
MESSAGES = [INITIATION, RESPONSE, COOKIE_REPLY]


def test_layouts_match_the_published_offsets() -> None:
    packed = INITIATION.pack()
    assert len(packed) == 148 and packed[:4] == b"\x01\0\0\0"
    assert packed[4:8] == bytes([4, 3, 2, 1])  # little-endian sender index
    assert packed[8:40] == b"e" * 32 and packed[40:88] == b"s" * 48
    assert packed[88:116] == b"t" * 28 and packed[116:132] == b"1" * 16
    packed = RESPONSE.pack()
    assert len(packed) == 92 and packed[:4] == b"\x02\0\0\0"
    assert packed[4:8] == bytes([7, 0, 0, 0]) and packed[8:12] == bytes([9, 0, 0, 0])
    assert packed[12:44] == b"e" * 32 and packed[60:76] == b"1" * 16
    packed = COOKIE_REPLY.pack()
    assert len(packed) == 64 and packed[:4] == b"\x03\0\0\0" and packed[8:32] == b"n" * 24


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Initiation | Response | CookieReply) -> None:
    assert type(message).unpack(message.pack()) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_wrong_size_type_and_reserved_bytes_rejected(
    message: Initiation | Response | CookieReply,
) -> None:
    packed = message.pack()
    parse = type(message).unpack
    truncated, oversized = packed[:-1], packed + b"\0"
    wrong_type = b"\x04" + packed[1:]
    reserved = [packed[:1] + b"\x01" + packed[2:], packed[:3] + b"\x80" + packed[4:]]
    for bad in (truncated, oversized, wrong_type, *reserved):
        with pytest.raises(MessageError):
            parse(bad)


@given(st.binary(max_size=200))
def test_parsers_raise_only_message_error(data: bytes) -> None:
    for parse in (Initiation.unpack, Response.unpack, CookieReply.unpack):
        with contextlib.suppress(MessageError):
            parse(data)
