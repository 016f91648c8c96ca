"""Client provisioning helpers: split-routing arithmetic for stock WireGuard configs."""

from __future__ import annotations

import ipaddress

import pytest

from aura_common.errors import AuraError
from services.cli.clients import allowed_ips, parse_networks
from services.cli.status import human_bytes, human_duration


def networks(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


def test_direct_networks_are_cut_out_of_the_vpn_ones() -> None:
    result = allowed_ips(networks("0.0.0.0/0", "::/0"), networks("192.168.0.0/16"))
    covered = {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("8.8.8.8")}
    for address in covered:
        assert any(address in n for n in result)
    assert not any(ipaddress.ip_address("192.168.1.1") in n for n in result)
    assert ipaddress.ip_network("::/0") in result
    # The pieces tile the rest of the space exactly.
    v4 = [n for n in result if n.version == 4]
    assert sum(n.num_addresses for n in v4) == 2**32 - 2**16


def test_a_direct_network_covering_a_vpn_network_removes_it() -> None:
    assert allowed_ips(networks("10.1.0.0/16", "10.2.0.0/16"), networks("10.0.0.0/8")) == []


def test_unrelated_direct_networks_change_nothing() -> None:
    vpn = networks("10.77.0.0/24")
    assert allowed_ips(vpn, networks("fd00::/8", "192.168.0.0/16")) == vpn


def test_bad_cidr_names_the_option() -> None:
    with pytest.raises(AuraError, match=r"--vpn-cidrs 10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/33"], "--vpn-cidrs")


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024 * 1024) == "3.0 MiB"
    assert human_duration(59) == "59s"
    assert human_duration(3600 + 120) == "1h 2m"
    assert human_duration(2 * 86400 + 3600) == "2d 1h"
