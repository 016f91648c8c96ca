"""Interface addresses, MTU, state and routes over netlink (pyroute2).

Everything acts on the network namespace of the calling process, so a process started with
`ip netns exec NS ...` (or after `setns`) configures its own namespace.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from aura_common.errors import AuraError

# Duplicate address detection would hold a new IPv6 address "tentative" (unusable) for
# seconds; a point-to-point TUN has no neighbours to collide with.
_IFA_F_NODAD = 0x02


def _index(ipr: IPRoute, name: str) -> int:
    indexes = ipr.link_lookup(ifname=name)
    if not indexes:
        raise AuraError(f"network interface {name!r} does not exist")
    return int(indexes[0])


def configure(name: str, addresses: Iterable[str], mtu: int) -> None:
    """Set the MTU, add the addresses (CIDR, IPv4 or IPv6) and bring `name` up."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        try:
            ipr.link("set", index=index, mtu=mtu)
            for cidr in addresses:
                interface = ipaddress.ip_interface(cidr)
                flags = _IFA_F_NODAD if interface.version == 6 else 0
                ipr.addr(
                    "replace", index=index, address=str(interface.ip),
                    prefixlen=interface.network.prefixlen, flags=flags,
                )
            ipr.link("set", index=index, state="up")
        except NetlinkError as error:
            raise AuraError(f"cannot configure interface {name!r}: {error}") from error


def add_routes(name: str, cidrs: Iterable[str]) -> None:
    """Route each network through `name` (replacing an existing route to it)."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            try:
                ipr.route("replace", dst=str(network), oif=index)
            except NetlinkError as error:
                raise AuraError(f"cannot add route {network} via {name!r}: {error}") from error


def remove_routes(name: str, cidrs: Iterable[str]) -> None:
    """Remove routes through `name`; routes already gone are not an error."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        for cidr in cidrs:
            network = ipaddress.ip_network(cidr, strict=False)
            try:
                ipr.route("del", dst=str(network), oif=index)
            except NetlinkError as error:
                if error.code not in (errno.ESRCH, errno.ENOENT):
                    raise AuraError(
                        f"cannot remove route {network} via {name!r}: {error}"
                    ) from error
