"""The dynamic-pool leases file (aura_common/state/pool.py).

Contract: `parse_leases` raises only ConfigError; every accepted lease lies in the pool and
no address is leased twice.
"""

from __future__ import annotations

import ipaddress

from aura_common.errors import ConfigError
from aura_common.state.pool import AddressPool, parse_leases

MAX_LEN = 8192
POOL = AddressPool(ipaddress.IPv4Network("10.77.0.0/24"), ipaddress.IPv6Network("fd77::/64"))


def test_one_input(data: bytes) -> None:
    try:
        leases = parse_leases(data, "leases.json", POOL)
    except ConfigError:
        return
    v4 = [lease["v4"] for lease in leases.values()]
    assert len(set(v4)) == len(v4)
    assert all(ipaddress.ip_address(a) in POOL.ipv4 for a in v4)
