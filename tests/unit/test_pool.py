"""Address pool and persisted dynamic leases."""

from __future__ import annotations

import contextlib
import json
import logging
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.errors import AuraError, ConfigError
from aura_common.state.pool import AddressPool, Leases, parse_leases

POOL = AddressPool(IPv4Network("10.77.0.0/24"), IPv6Network("fd77:7777::/64"))


def test_server_holds_the_first_host_address() -> None:
    assert str(POOL.server_v4) == "10.77.0.1"
    assert str(POOL.server_v6) == "fd77:7777::1"
    assert POOL.capacity == 253


def test_next_free_skips_taken_and_pairs_host_indexes() -> None:
    assert POOL.next_free(set()) == ("10.77.0.2", "fd77:7777::2")
    assert POOL.next_free({"10.77.0.2", "10.77.0.3"}) == ("10.77.0.4", "fd77:7777::4")
    # A taken IPv6 address blocks its pair too.
    assert POOL.next_free({"fd77:7777::2"}) == ("10.77.0.3", "fd77:7777::3")
    # Addresses outside the pool do not matter.
    assert POOL.next_free({"192.168.1.2"}) == ("10.77.0.2", "fd77:7777::2")


def test_ipv4_only_pool() -> None:
    pool = AddressPool(IPv4Network("10.1.2.0/30"))
    assert pool.server_v6 is None
    assert pool.next_free(set()) == ("10.1.2.2", None)
    with pytest.raises(AuraError, match=r"10\.1\.2\.0/30 is exhausted"):
        pool.next_free({"10.1.2.2"})


def test_validate_static() -> None:
    assert POOL.validate_static("10.77.0.9") == ("10.77.0.9", "fd77:7777::9")
    assert POOL.validate_static("fd77:7777::fe") == ("10.77.0.254", "fd77:7777::fe")
    cases = {
        "10.77.1.5": "outside the address pool",
        "10.77.0.0": "network address",
        "10.77.0.1": "server's own address",
        "fd77:7777::1": "server's own address",
        "10.77.0.255": "broadcast",
        "fd77:7777::1:0": "no IPv4 counterpart",
        "nonsense": "not an IP address",
    }
    for address, message in cases.items():
        with pytest.raises(AuraError, match=message):
            POOL.validate_static(address)
    with pytest.raises(AuraError, match="no IPv6 network"):
        AddressPool(IPv4Network("10.0.0.0/24")).validate_static("fd77:7777::5")


def test_leases_are_sticky_and_survive_restarts(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    leases = Leases(path, POOL)
    alice = leases.lease("alice")
    bob = leases.lease("bob", reserved={"10.77.0.3"})
    assert alice == ("10.77.0.2", "fd77:7777::2")
    assert bob == ("10.77.0.4", "fd77:7777::4")
    assert leases.lease("alice") == alice
    restarted = Leases(path, POOL)
    assert restarted.active() == {"alice": alice, "bob": bob}
    restarted.release("alice")
    restarted.release("nobody")
    assert Leases(path, POOL).active() == {"bob": bob}
    assert Leases(path, POOL).lease("carol") == alice  # freed addresses are reused


def test_pool_exhaustion_is_a_clear_error(tmp_path: Path) -> None:
    pool = AddressPool(IPv4Network("10.9.0.0/29"))
    leases = Leases(tmp_path / "leases.json", pool)
    for i in range(pool.capacity):
        leases.lease(f"p{i}")
    with pytest.raises(AuraError, match="exhausted"):
        leases.lease("one-too-many")


def test_damaged_leases_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    doc = {"version": 1, "leases": {"alice": {"v4": "10.99.0.2", "v6": None, "since": "x"}}}
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        parse_leases(path.read_bytes(), str(path), POOL)
    assert info.value.key == "leases.alice.v4"
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", [b"", b"{\"version\": 1, \"lea", b"\xff",
                                    b'{"version": 1, "leases": {"a": {"v4": "10.99.0.2"}}}'])
def test_a_damaged_leases_file_is_a_warning_and_is_replaced(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "leases.json"
    path.write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="aura_common.state.pool"):
        leases = Leases(path, POOL)  # the router starts
    [record] = caplog.records
    assert record.levelno == logging.WARNING and str(path) in record.getMessage()
    assert leases.active() == {}
    alice = leases.lease("alice")
    assert Leases(path, POOL).active() == {"alice": alice}


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.from_regex(r'\{"version": 1, "leases": .{0,60}\}'))
def test_garbage_leases_raise_only_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                data: bytes | str) -> None:  # fmt: skip
    path = tmp_path_factory.mktemp("leases") / "leases.json"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    with contextlib.suppress(ConfigError):
        Leases(path, POOL)
