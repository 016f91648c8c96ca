"""2-byte length framing of WireGuard messages inside TLS (aura_common/wire/framing.py).

Contract: `FrameDecoder.feed` never raises, however the stream is cut into reads; the frames
it returns are exactly the stream's complete frames; it buffers at most MAX_FRAME + 1 bytes.
"""

from __future__ import annotations

from aura_common.wire.framing import MAX_FRAME, FrameDecoder, encode

MAX_LEN = 3 * (MAX_FRAME + 2)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    # The first byte picks how the stream is cut into reads.
    step = 1 + data[0] * 97
    stream = data[1:]
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for start in range(0, len(stream), step):
        frames.extend(decoder.feed(stream[start : start + step]))
        assert decoder.buffered <= MAX_FRAME + 1
    consumed = len(stream) - decoder.buffered
    assert encode(frames) == stream[:consumed]
