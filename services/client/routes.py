"""Which addresses and routes the client's TUN carries: split routing, I/O-free.

Routes are `vpn` networks minus `direct` networks minus the server's own addresses, so the
encrypted packets themselves never loop into the tunnel. A /0 is installed as two /1 routes,
which beat the existing default route without replacing it; everything carved out of the
tunnel (direct networks, the server) then simply falls through to the routes that were there
before, so no gateway has to be looked up or remembered.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aura_common.addresses import IPAddress
from aura_common.config import ClientConfig
from aura_common.wire.control import ControlMessage

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def subtract(networks: Iterable[Network], removed: Iterable[Network]) -> list[Network]:
    """`networks` without the addresses in `removed`, as few CIDRs as possible."""
    remaining = list(networks)
    for cut in removed:
        next_round: list[Network] = []
        for network in remaining:
            if network.version != cut.version or not network.overlaps(cut):
                next_round.append(network)
            # Both of one version now; the types cannot say so, hence the two ignores below.
            elif network.subnet_of(cut):  # type: ignore[arg-type]
                continue
            else:
                next_round.extend(network.address_exclude(cut))  # type: ignore[arg-type]
        remaining = next_round
    return _collapse(remaining)


def tunnel_routes(
    vpn: Iterable[Network], direct: Iterable[Network], bypass: Iterable[IPAddress]
) -> list[Network]:
    """Routes through the TUN: `vpn` minus `direct` minus the `bypass` hosts, /0 split in two."""
    hosts = [ipaddress.ip_network(address) for address in bypass]
    routes: list[Network] = []
    for network in subtract(_collapse(vpn), [*direct, *hosts]):
        routes.extend(network.subnets() if network.prefixlen == 0 else [network])
    return sorted(routes, key=lambda n: (n.version, n.network_address, n.prefixlen))


def _collapse(networks: Iterable[Network]) -> list[Network]:
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for network in networks:
        if isinstance(network, ipaddress.IPv4Network):
            v4.append(network)
        else:
            v6.append(network)
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


@dataclass(frozen=True)
class TunnelPlan:
    """What the TUN should hold: its addresses and the routes through it."""

    addresses: tuple[Interface, ...]
    routes: tuple[Network, ...]
    dns: tuple[IPAddress, ...] = ()

    def changes(self, new: TunnelPlan) -> tuple[list[Interface], list[Interface],
                                                list[Network], list[Network]]:
        """(addresses to add, addresses to remove, routes to add, routes to remove)."""
        return (
            [a for a in new.addresses if a not in self.addresses],
            [a for a in self.addresses if a not in new.addresses],
            [r for r in new.routes if r not in self.routes],
            [r for r in self.routes if r not in new.routes],
        )


def plan_tunnel(
    config: ClientConfig, control: ControlMessage | None, bypass: Sequence[IPAddress]
) -> TunnelPlan:
    """The TUN's addresses and routes from the config and the server's latest control message.

    The server's addresses win over the config's (it is the authority on leases; with a dynamic
    pool the config may have none); routes the server pushes are added to the `vpn` networks.
    """
    addresses: tuple[Interface, ...] = config.interface.addresses
    vpn: list[Network] = list(config.tunnel.vpn)
    dns = tuple(ipaddress.ip_address(a) for a in config.interface.dns)
    if control is not None:
        addresses = control.address or addresses
        vpn.extend(control.routes)
        dns = control.dns or dns
    return TunnelPlan(addresses, tuple(tunnel_routes(vpn, config.tunnel.direct, bypass)), dns)
