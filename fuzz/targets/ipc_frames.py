"""IPC frames (aura_common/ipc.py): what one process reads from another's socket.

Contract: `decode` raises only ValueError; a frame it accepts is a map with a string `t` and
takes at most DECODE_EXPANSION times its encoded size in memory; `shape_problem` never raises
and answers None or a description.
"""

from __future__ import annotations

import sys

from aura_common import ipc

MAX_LEN = 70_000


def deep_size(value: object) -> int:
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
        frame = ipc.decode(data)
    except ValueError:
        return
    assert isinstance(frame, dict) and isinstance(frame["t"], str)
    assert deep_size(frame) <= ipc.DECODE_EXPANSION * len(data) + 8192, len(data)
    problem = ipc.shape_problem(frame, ipc.ROUTER_FRAMES)
    assert problem is None or isinstance(problem, str)
