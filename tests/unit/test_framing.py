"""u16 big-endian length framing: round trips under any split of the stream, and bounds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_common.wire.framing import MAX_FRAME, FrameDecoder, encode

messages = st.lists(st.binary(max_size=2000), max_size=20)


def test_layout_is_length_then_payload() -> None:
    assert encode([b"abc", b""]) == b"\x00\x03abc\x00\x00"
    assert encode([b"x" * 258])[:2] == b"\x01\x02"


def test_oversized_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        encode([b"\0" * (MAX_FRAME + 1)])
    assert FrameDecoder().feed(encode([b"\1" * MAX_FRAME])) == [b"\1" * MAX_FRAME]


@given(messages, st.lists(st.integers(min_value=0, max_value=5000), max_size=30))
def test_round_trip_under_any_split(datagrams: list[bytes], cuts: list[int]) -> None:
    stream = encode(datagrams)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        out.extend(decoder.feed(stream[start:end]))
    assert out == datagrams
    assert decoder.buffered == 0


@given(st.binary(max_size=4000), st.integers(min_value=1, max_value=300))
def test_arbitrary_bytes_never_raise_and_stay_bounded(stream: bytes, step: int) -> None:
    decoder = FrameDecoder()
    total = 0
    for start in range(0, len(stream), step):
        frames = decoder.feed(stream[start : start + step])
        total += sum(2 + len(f) for f in frames)
        assert decoder.buffered <= MAX_FRAME + 1
    assert total + decoder.buffered == len(stream)


def test_one_read_yields_every_complete_frame_at_once() -> None:
    decoder = FrameDecoder()
    stream = encode([b"a", b"bb", b"ccc"])
    assert decoder.feed(stream + b"\x00\x05de") == [b"a", b"bb", b"ccc"]
    assert decoder.buffered == 4
    assert decoder.feed(b"fgh") == [b"defgh"]
