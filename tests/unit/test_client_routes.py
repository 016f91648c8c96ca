"""Split routing for the client: vpn minus direct minus the server, and control messages."""

from __future__ import annotations

import ipaddress
from ipaddress import ip_address, ip_interface, ip_network

import yaml
from hypothesis import given
from hypothesis import strategies as st

from aura_common.config import ClientConfig
from aura_common.wire.control import ControlMessage
from services.client.routes import TunnelPlan, plan_tunnel, subtract, tunnel_routes

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def config(vpn: list[str], direct: list[str], addresses: list[str] | None = None) -> ClientConfig:
    return ClientConfig.from_mapping({
        "version": 1,
        "name": "alice",
        "interface": {"private_key": KEY,
                      "addresses": ["10.77.0.2/32"] if addresses is None else addresses},
        "server": {"public_key": KEY, "host": "198.51.100.1", "ca_public_key": KEY},
        "tunnel": {"split": {"vpn": [{"cidr": c} for c in vpn],
                             "direct": [{"cidr": c} for c in direct]}},
    })


def covers(routes: list[ipaddress.IPv4Network | ipaddress.IPv6Network], address: str) -> bool:
    return any(ip_address(address) in route for route in routes)


def test_default_route_is_split_in_halves_and_keeps_the_server_out() -> None:
    routes = tunnel_routes([ip_network("0.0.0.0/0"), ip_network("::/0")], [],
                           [ip_address("198.51.100.1")])
    assert ip_network("0.0.0.0/1") in routes
    assert ip_network("::/1") in routes and ip_network("8000::/1") in routes
    assert ip_network("0.0.0.0/0") not in routes and ip_network("::/0") not in routes
    assert not covers(routes, "198.51.100.1")
    assert covers(routes, "198.51.100.2") and covers(routes, "203.0.113.2")
    assert len([r for r in routes if r.version == 4]) == 32  # one per bit of the server address


def test_direct_networks_are_carved_out() -> None:
    routes = tunnel_routes([ip_network("10.0.0.0/8")], [ip_network("10.1.0.0/16")], [])
    assert not covers(routes, "10.1.2.3")
    assert covers(routes, "10.0.0.1") and covers(routes, "10.255.0.1")
    assert not covers(routes, "11.0.0.1")


def test_direct_wider_than_vpn_removes_it_and_other_families_are_untouched() -> None:
    routes = tunnel_routes([ip_network("10.1.0.0/16"), ip_network("fd00::/8")],
                           [ip_network("10.0.0.0/8")], [ip_address("2001:db8::1")])
    assert routes == [ip_network("fd00::/8")]


def test_server_outside_vpn_networks_changes_nothing() -> None:
    assert tunnel_routes([ip_network("192.168.50.0/24")], [], [ip_address("198.51.100.1")]) == [
        ip_network("192.168.50.0/24")
    ]


def test_overlapping_vpn_networks_collapse() -> None:
    routes = tunnel_routes([ip_network("10.0.0.0/9"), ip_network("10.128.0.0/9"),
                            ip_network("10.1.0.0/16")], [], [])
    assert routes == [ip_network("10.0.0.0/8")]


networks_v4 = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1), st.integers(0, 32),
)


@given(st.lists(networks_v4, max_size=4), st.lists(networks_v4, max_size=4),
       st.lists(st.integers(0, 2**32 - 1), max_size=5))
def test_subtract_is_exact_set_difference(
    vpn: list[ipaddress.IPv4Network], direct: list[ipaddress.IPv4Network], probes: list[int]
) -> None:
    result = subtract(vpn, direct)
    samples = [ipaddress.IPv4Address(p) for p in probes]
    samples += [n.network_address for n in vpn + direct] + [n.broadcast_address for n in vpn]
    for address in samples:
        expected = any(address in n for n in vpn) and not any(address in n for n in direct)
        assert any(address in n for n in result) == expected
    for a in result:  # no overlaps: each address is routed once
        assert sum(a.overlaps(b) for b in result) == 1


def test_plan_uses_config_addresses_until_the_server_says_otherwise() -> None:
    cfg = config(["0.0.0.0/0"], [])
    server = [ip_address("198.51.100.1")]
    before = plan_tunnel(cfg, None, server)
    assert before.addresses == (ip_interface("10.77.0.2/32"),)

    message = ControlMessage(
        address=(ip_interface("10.77.0.9/32"), ip_interface("fd77:7777::9/128")),
        dns=(ip_address("10.77.0.1"),),
        routes=(ip_network("fd77:7777::/64"),),
    )
    after = plan_tunnel(cfg, message, server)
    assert after.addresses == message.address
    assert after.dns == (ip_address("10.77.0.1"),)
    assert ip_network("fd77:7777::/64") in after.routes
    assert not covers(list(after.routes), "198.51.100.1")

    add_addr, del_addr, add_routes, del_routes = before.changes(after)
    assert add_addr == list(message.address)
    assert del_addr == [ip_interface("10.77.0.2/32")]
    assert add_routes == [ip_network("fd77:7777::/64")] and del_routes == []


def test_control_message_without_addresses_keeps_the_configured_ones() -> None:
    cfg = config(["10.0.0.0/8"], ["10.9.0.0/16"])
    plan = plan_tunnel(cfg, ControlMessage(), [])
    assert plan.addresses == (ip_interface("10.77.0.2/32"),)
    assert not covers(list(plan.routes), "10.9.1.1") and covers(list(plan.routes), "10.8.1.1")


def test_changes_between_equal_plans_are_empty() -> None:
    plan = TunnelPlan((ip_interface("10.77.0.2/32"),), (ip_network("10.0.0.0/8"),))
    assert plan.changes(plan) == ([], [], [], [])


def test_a_dynamic_pool_client_has_no_address_until_the_server_leases_one() -> None:
    dynamic = config(["0.0.0.0/0"], [], addresses=[])
    assert dynamic.interface.addresses == ()
    assert plan_tunnel(dynamic, None, []).addresses == ()
    leased = ControlMessage(address=(ip_interface("10.77.0.5/32"),))
    assert plan_tunnel(dynamic, leased, []).addresses == (ip_interface("10.77.0.5/32"),)
    # What `aura provision-client --format aura` writes for a dynamic pool loads back as is.
    assert ClientConfig.from_mapping(yaml.safe_load(dynamic.dump())) == dynamic
