"""runtime.json in the state directory (aura_common/runtime.py).

Contract: `parse_runtime` raises only ConfigError, and what it accepts names only known
transports with well-formed entries.
"""

from __future__ import annotations

from aura_common.errors import ConfigError
from aura_common.roles import is_transport
from aura_common.runtime import parse_runtime

MAX_LEN = 4096


def test_one_input(data: bytes) -> None:
    try:
        doc = parse_runtime(data, "runtime.json")
    except ConfigError:
        return
    assert all(map(is_transport, doc["transports"]))
    for entry in doc["transports"].values():
        assert all(isinstance(address, str) for address in entry["bound"])
