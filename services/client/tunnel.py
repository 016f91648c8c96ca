"""The client's TUN device and what the kernel holds for it: addresses and routes.

`TunnelDevice` is what the daemon needs of it; `ClientTun` is the kernel's, and
`services.client.fakes.MemoryTun` one in memory for tests without root.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from aura_common.errors import AuraError
from aura_common.netio import link
from aura_common.netio.tun import Tun
from services.client.routes import Interface, TunnelPlan

IFNAMSIZ = 15


def tun_name(client_name: str) -> str:
    return f"aura-{client_name}"[:IFNAMSIZ]


class PacketDevice(Protocol):
    """The packets side of a TUN: non-blocking batches, readable when `fileno` is."""

    def fileno(self) -> int: ...

    def read_batch(self, limit: int = 256) -> list[bytes]: ...

    def write_batch(self, packets: Sequence[bytes]) -> None: ...


class TunnelDevice(Protocol):
    """The open TUN and the plan it carries (see `ClientTun`)."""

    name: str
    mtu: int
    plan: TunnelPlan

    @property
    def tun(self) -> PacketDevice: ...

    def up(self) -> None: ...

    def set_mtu(self, mtu: int) -> None: ...

    def apply(self, plan: TunnelPlan) -> None: ...

    def close(self) -> None: ...


# Opens the tunnel device: (name, mtu) -> device.
TunFactory = Callable[[str, int], TunnelDevice]


class ClientTun:
    """The open TUN and the plan it currently carries. Closing it removes the device, and the
    kernel drops its addresses and routes with it.

    `up`, `set_mtu` and `apply` talk netlink through pyroute2, which cannot run inside a
    running event loop: call them with `asyncio.to_thread`."""

    def __init__(self, name: str, mtu: int) -> None:
        self.tun = Tun.open(name, mtu=mtu)
        self.name = self.tun.name
        self.mtu = mtu
        self.plan = TunnelPlan((), ())

    def up(self) -> None:
        link.configure(self.name, [], self.mtu)

    def set_mtu(self, mtu: int) -> None:
        link.configure(self.name, [], mtu)
        self.mtu = mtu

    def apply(self, plan: TunnelPlan) -> None:
        add_addresses, remove_addresses, add_routes, remove_routes = self.plan.changes(plan)
        # Routes first out, last in: a route through the TUN needs no address, but removing an
        # address can take routes with it.
        link.remove_routes(self.name, [str(r) for r in remove_routes])
        _remove_addresses(self.name, remove_addresses)
        link.configure(self.name, [str(a) for a in add_addresses], self.mtu)
        link.add_routes(self.name, [str(r) for r in add_routes])
        self.plan = plan

    def close(self) -> None:
        self.tun.close()


def _remove_addresses(name: str, addresses: list[Interface]) -> None:
    if not addresses:
        return
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=name)
        if not indexes:
            raise AuraError(f"network interface {name!r} does not exist")
        for interface in addresses:
            try:
                ipr.addr("del", index=indexes[0], address=str(interface.ip),
                         prefixlen=interface.network.prefixlen)
            except NetlinkError as error:
                if error.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise AuraError(f"cannot remove {interface} from {name!r}: {error}") from error

