"""The Linux client behind `aura client up`: TUN ⇄ WireGuard ⇄ carrier, forever.

This module only wires the parts together: `order` (the transport order and the manifests that
change it), `failover` (paths: connecting, probing, moving back), `datapath` (packets between the
TUN and the live path), `network` (addresses, routes, MTU and DNS in the kernel) and
`control_socket` (`status`, `down`). The TUN and the carriers come from factories, so the whole
client also runs on the in-memory ones of `services.client.fakes`.

It stops only on `down`, SIGTERM/SIGINT (the process sets `stop`), a config error at start, or a
fatal TUN error, each with a log line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from aura_common import ipc
from aura_common.config import ClientConfig, format_host_port
from aura_common.errors import AuraError
from aura_common.ipc.accounts import own_account_admits, own_account_only
from aura_common.ipc.frames import TO_CLIENT, ClientState, TunnelState
from aura_common.wire.control import ControlMessage
from services.client.carriers import CARRIERS
from services.client.carriers.base import CarrierFactory
from services.client.control_socket import ControlSocket
from services.client.datapath import DataPath, new_counters
from services.client.dns import SystemDns, detect
from services.client.failover import Failover
from services.client.network import TunnelNetwork, restore_dns
from services.client.order import TransportOrder
from services.client.path import Path
from services.client.schedule import Target
from services.client.tunnel import ClientTun, TunFactory, TunnelDevice, tun_name

log = logging.getLogger("aura-client")


class ClientDaemon:
    def __init__(self, config: ClientConfig, dns: SystemDns | None = None, *,
                 open_tun: TunFactory = ClientTun,
                 carriers: Mapping[str, CarrierFactory] = CARRIERS) -> None:
        self.config = config
        self.dns = dns or SystemDns(config.dns_state_file, detect())
        self.open_tun = open_tun
        self.carriers = carriers
        self.order = TransportOrder(config, list(carriers))
        self.stop = asyncio.Event()
        self.tun: TunnelDevice | None = None
        self.failover: Failover | None = None
        self.datapath: DataPath | None = None
        self.last_handshake: float | None = None  # wall clock, for status
        self._background: set[asyncio.Task[None]] = set()
        self._fatal: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        os.makedirs(self.config.runtime_dir, mode=0o700, exist_ok=True)
        control = ControlSocket(self.status, self.stop.set)
        listener = await ipc.Listener.start(
            self.config.control_socket, control.serve, own_account_only, own_account_admits,
            protocol=TO_CLIENT,
            role="client")
        loop = asyncio.get_running_loop()
        network: TunnelNetwork | None = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            await asyncio.to_thread(self.dns.recover)
            self.tun = tun = self.open_tun(tun_name(self.config.name), self.config.interface.mtu)
            await asyncio.to_thread(tun.up)
            network = TunnelNetwork(self.config, tun, self.dns)
            await network.apply()
            self.failover = failover = Failover(self.order, self._new_path, network)
            self.datapath = datapath = DataPath(tun, lambda: failover.path,
                                                self._control_message, self._fail)
            datapath.start()
            log.info("tunnel device %s ready (mtu %d); transports: %s", tun.name,
                     self.config.interface.mtu,
                     ", ".join(str(t) for t in self.order.schedule.order))
            tasks = [
                loop.create_task(failover.tick_forever()),
                loop.create_task(failover.paths_forever()),
                loop.create_task(self.stop.wait()),
            ]
            fatal = asyncio.ensure_future(self._fatal)
            done, _ = await asyncio.wait([*tasks, fatal], return_when=asyncio.FIRST_COMPLETED)
            if fatal in done:
                raise AuraError(fatal.result())
            for task in done:
                task.result()  # a crash in a task must not pass for a clean stop
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.failover is not None:
                self.failover.close()
            if network is not None:
                await network.restore_dns()
            else:
                await asyncio.to_thread(restore_dns, self.dns)
            if self.tun is not None:
                if self.datapath is not None:
                    self.datapath.stop()
                self.tun.close()
                log.info("tunnel device %s removed, with its routes", self.tun.name)
            await listener.close()

    def _new_path(self, target: Target, address: str) -> Path:
        assert self.datapath is not None
        return Path(self.config, target, address, self.carriers, self.datapath.received,
                    self._handshaken)

    def _handshaken(self) -> None:
        self.last_handshake = time.time()

    def _control_message(self, message: ControlMessage) -> None:
        assert self.failover is not None
        task = asyncio.get_running_loop().create_task(
            self.failover.network.apply_control(message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if message.manifest is not None:
            self.order.accept_manifest(message.manifest, asyncio.get_running_loop().time())

    def _fail(self, reason: str) -> None:
        if not self._fatal.done():
            self._fatal.set_result(reason)

    def status(self) -> ClientState:
        plan = self.tun.plan if self.tun is not None else None
        live = self.failover.live if self.failover is not None else None
        counters = self.datapath.counters if self.datapath is not None else new_counters()
        return ClientState(
            state=self.failover.state if self.failover is not None else TunnelState.CONNECTING,
            transport=live.target.transport if live else None,
            endpoint=format_host_port(*live.endpoint) if live else None,
            last_handshake=self.last_handshake,
            **counters,
            addresses=[str(a) for a in plan.addresses] if plan else [],
            routes=[str(r) for r in plan.routes] if plan else [],
            dns=[str(a) for a in plan.dns] if plan else [],
            dns_applied_with=self.dns.strategy.name if self.dns.applied else None,
            manifest_serial=self.order.manifest_serial,
            tun=self.tun.name if self.tun else None,
            mtu=self.tun.mtu if self.tun else None,
            last_error=self.failover.last_error if self.failover is not None else None,
            pid=os.getpid(),
        )
