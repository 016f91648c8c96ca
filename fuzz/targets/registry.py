"""The peer registry file (aura_common/state/registry.py).

Contract: `parse_peers` raises only ConfigError; accepted peers have 32-byte keys and
unique names.
"""

from __future__ import annotations

from aura_common.errors import ConfigError
from aura_common.state.registry import parse_peers

MAX_LEN = 8192


def test_one_input(data: bytes) -> None:
    try:
        peers = parse_peers(data, "peers.json")
    except ConfigError:
        return
    assert len({peer.name for peer in peers}) == len(peers)
    for peer in peers:
        assert len(peer.public_key) == 32
        assert peer.preshared_key is None or len(peer.preshared_key) == 32
