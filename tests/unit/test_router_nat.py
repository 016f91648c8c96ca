"""The NAT ruleset the router installs."""

from __future__ import annotations

import ipaddress

from services.router.nat import ruleset, table_name


def test_ruleset_masquerades_the_pool_out_of_the_uplink_and_clamps_mss() -> None:
    rules = ruleset("aura0", [ipaddress.ip_network("10.77.0.0/24"),
                              ipaddress.ip_network("fd77:7777::/64")], "eth0")
    assert "ip saddr 10.77.0.0/24 oifname \"eth0\" masquerade" in rules
    assert "ip6 saddr fd77:7777::/64 oifname \"eth0\" masquerade" in rules
    assert "maxseg size set rt mtu" in rules
    # Declared (so the delete cannot fail), deleted and refilled in one transaction.
    assert rules.startswith("table inet aura_aura0\ndelete table inet aura_aura0\n")


def test_without_uplink_everything_but_the_tunnel_is_masqueraded() -> None:
    rules = ruleset("aura-x.1", [ipaddress.ip_network("10.9.0.0/24")], None)
    assert 'oifname != "aura-x.1" masquerade' in rules
    assert table_name("aura-x.1") == "aura_aura_x_1"
