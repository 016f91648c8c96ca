"""Stream framing for WireGuard messages: each one prefixed with its length, u16 big-endian.

The length does not count the two prefix bytes. I/O-free: `encode` builds the bytes for one
write, `FrameDecoder.feed` turns whatever one read returned into every complete frame in it.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_FRAME = 0xFFFF
# The ALPN name Aura announces inside TLS and QUIC: WireGuard messages, framed as here on TLS.
ALPN = "aura/1"


def encode(datagrams: Iterable[bytes]) -> bytes:
    """All `datagrams` framed back to back; ValueError for one longer than MAX_FRAME."""
    parts: list[bytes] = []
    for datagram in datagrams:
        size = len(datagram)
        if size > MAX_FRAME:
            raise ValueError(f"a frame carries at most {MAX_FRAME} bytes, got {size}")
        parts.append(size.to_bytes(2, "big"))
        parts.append(datagram)
    return b"".join(parts)


class FrameDecoder:
    """Reassembles frames from a byte stream; holds at most one partial frame."""

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial = b""

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete (at most MAX_FRAME + 1)."""
        return len(self._partial)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._partial + data if self._partial else data
        frames: list[bytes] = []
        position, available = 0, len(buffer)
        while available - position >= 2:
            end = position + 2 + ((buffer[position] << 8) | buffer[position + 1])
            if end > available:
                break
            frames.append(buffer[position + 2 : end])
            position = end
        self._partial = buffer[position:]
        return frames
