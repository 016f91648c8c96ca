"""A transport's runtime.json in the state directory (aura_common/state/runtime.py).

Contract: `parse_runtime` raises only ConfigError, and what it accepts is the named
transport's well-formed entry.
"""

from __future__ import annotations

from aura_common.errors import ConfigError
from aura_common.state.runtime import parse_runtime

MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    try:
        entry = parse_runtime(data, "runtime.json", "udp")
    except ConfigError:
        return
    assert entry["transport"] == "udp"
    assert all(isinstance(address, str) for address in entry["bound"])
    assert isinstance(entry["activated"], bool)
