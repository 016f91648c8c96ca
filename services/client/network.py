"""What the kernel holds for the tunnel: its addresses, routes, MTU and the pushed DNS servers.

The plan (`routes.plan_tunnel`) follows the config, the server's latest control message and
the server addresses the paths use; the MTU follows the live path's carrier. Changes go to the
kernel one at a time (netlink calls run in a worker thread), and a failure is logged, not
raised: the tunnel keeps working with what the kernel has.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable

from aura_common.addresses import IPAddress
from aura_common.config import ClientConfig
from aura_common.errors import AuraError
from aura_common.wire.control import ControlMessage
from services.client.dns import SystemDns
from services.client.path import Path
from services.client.routes import plan_tunnel
from services.client.tunnel import TunnelDevice

log = logging.getLogger("aura-client")


class TunnelNetwork:
    def __init__(self, config: ClientConfig, tun: TunnelDevice, dns: SystemDns) -> None:
        self.config = config
        self.tun = tun
        self.dns = dns
        self.control: ControlMessage | None = None
        self.bypass: tuple[IPAddress, ...] = ()
        self._lock = asyncio.Lock()  # one change to the kernel at a time

    async def apply_control(self, message: ControlMessage) -> None:
        """The server's addresses, DNS and routes for this client."""
        self.control = message
        await self.apply()

    async def follow_path_mtu(self, path: Path) -> None:
        """Give the TUN the MTU the live path's carrier moves unfragmented, so the kernel
        sizes packets (and TCP its MSS) for it: lower on QUIC, the config's on UDP and TCP."""
        mtu = path.mtu
        async with self._lock:  # apply() configures the link with self.tun.mtu too
            if mtu == self.tun.mtu:
                return
            try:
                await asyncio.to_thread(self.tun.set_mtu, mtu)
            except AuraError as error:
                log.error("could not set the mtu of %s: %s", self.tun.name, error)
                return
        log.info("mtu of %s is %d for %s", self.tun.name, mtu, path.target.transport)

    async def route_around(self, hosts: Iterable[str]) -> None:
        """Keep the server addresses the paths use out of the tunnel routes, so the carriers'
        own packets never loop into the tunnel."""
        self.bypass = tuple(sorted(map(ipaddress.ip_address, set(hosts)), key=str))
        await self.apply()

    async def apply(self) -> None:
        async with self._lock:
            plan = plan_tunnel(self.config, self.control, self.bypass)
            if plan == self.tun.plan:
                return
            added, removed, _, _ = self.tun.plan.changes(plan)
            try:
                await asyncio.to_thread(self.tun.apply, plan)
            except AuraError as error:
                log.error("could not update %s: %s", self.tun.name, error)
                return
            try:
                await asyncio.to_thread(self.dns.apply, self.tun.name, plan.dns)
            except (AuraError, OSError) as error:
                log.error("could not apply the DNS servers %s: %s",
                          ", ".join(map(str, plan.dns)), error)
        if added or removed:
            log.info("addresses on %s: %s", self.tun.name,
                     ", ".join(map(str, plan.addresses)) or "none yet (waiting for the server)")
        log.debug("%d routes through %s", len(plan.routes), self.tun.name)

    async def restore_dns(self) -> None:
        async with self._lock:  # not while apply() is changing it
            await asyncio.to_thread(restore_dns, self.dns)


def restore_dns(dns: SystemDns) -> None:
    try:
        dns.restore()
    except (AuraError, OSError) as error:
        log.error("could not restore the DNS settings: %s", error)
