"""IPC frames (aura_common/ipc/frames.py): what one process reads from another's socket.

Contract: `read_map` raises only ProtocolError; a map it accepts has a string `t` and takes
at most DECODE_EXPANSION times its encoded size in memory; `Joiner.add` raises only
ProtocolError; `from_map`, for every direction of every socket, raises only ProtocolError or
returns a frame that direction accepts, which encodes to a frame that decodes to the same
encoding again; a `signed` frame's manifest, read as the CLI reads it, raises only
ManifestError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

from aura_common.ipc import frames
from aura_common.pki.manifest import ManifestError, SignedManifest

MAX_LEN = 70_000
PROTOCOLS = (frames.TO_ROUTER, frames.FROM_ROUTER, frames.TO_SIGNER, frames.FROM_SIGNER,
             frames.TO_CLIENT, frames.FROM_CLIENT)


def deep_size(value: object) -> int:
    """Memory held by a decoded frame: every object once (small ints and the like are shared,
    so counting them again only overstates)."""
    seen: set[int] = set()
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def test_one_input(data: bytes) -> None:
    try:
        mapping = frames.read_map(data)
    except frames.ProtocolError:
        return
    assert isinstance(mapping, dict) and isinstance(mapping["t"], str)
    assert deep_size(mapping) <= frames.DECODE_EXPANSION * len(data) + 8192, len(data)
    for protocol in PROTOCOLS:
        try:
            # a chunked frame's only part, or no part
            joined = frames.Joiner(protocol).add(mapping, len(data))
            if joined is None:
                continue
            frame = frames.from_map(joined, protocol)
        except frames.ProtocolError:
            continue
        assert protocol.frames[frame.TAG] is type(frame)
        encoded = frames.encode(frame)
        assert frames.encode(frames.decode(encoded, protocol)) == encoded
        if isinstance(frame, frames.Signed):
            with contextlib.suppress(ManifestError):
                SignedManifest.from_mapping(dataclasses.asdict(frame.manifest))
