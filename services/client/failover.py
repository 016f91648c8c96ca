"""Which path carries the tunnel: connecting, falling back, probing and moving back.

The transports are tried in the schedule's order; each attempt is one `Path` (a carrier and a
WireGuard device of its own). While on a fallback, the better transports are probed beside the
live path and the client moves as soon as one completes a handshake. A path that breaks (the
carrier reports it, or the server stays silent past the liveness limit) is logged at WARNING
with its reason, and the next attempt follows the schedule's backoff.

Time is the event loop's clock, so tests can run the whole of it on a virtual one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from aura_common.config import format_host_port
from aura_common.ipc.frames import TunnelState
from aura_common.service.log import fields
from services.client.network import TunnelNetwork
from services.client.order import TransportOrder
from services.client.path import Path
from services.client.schedule import Target

log = logging.getLogger("aura-client")

TICK_INTERVAL = 0.25

# Builds a path (not yet connected) to a target over the address its host resolved to.
PathFactory = Callable[[Target, str], Path]


class Failover:
    """`state` is where the tunnel is; `path` is the path that carries traffic (or
    is being tried), `probe` a better transport being tried beside it."""

    def __init__(self, order: TransportOrder, new_path: PathFactory,
                 network: TunnelNetwork) -> None:
        self.order = order
        self.schedule = order.schedule
        self.new_path = new_path
        self.network = network
        self.path: Path | None = None
        self.probe: Path | None = None
        self.state = TunnelState.CONNECTING
        self.last_error: str | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def live(self) -> Path | None:
        """The path that carries traffic now, if one is up."""
        return self.path if self.state == TunnelState.UP else None

    def close(self) -> None:
        for path in (self.probe, self.path):
            if path is not None:
                path.close()

    async def paths_forever(self) -> None:
        while True:
            target = self.schedule.current
            self.state = TunnelState.CONNECTING
            reason, was_up = await self._attempt(target)
            if was_up:
                assert self.path is not None
                target = self.path.target  # a probe may have moved the client meanwhile
            self.path = None
            self.last_error = f"{target}: {reason}"
            info = fields(transport=target.transport,
                          endpoint=format_host_port(target.host, target.port))
            if was_up:
                log.warning("%s path broke: %s", target, reason, extra=info)
                delay = self.schedule.lost(self._loop.time())
            else:
                log.warning("%s failed: %s", target, reason, extra=info)
                delay = self.schedule.failed()
            if delay:
                self.state = TunnelState.BACKOFF
                log.warning("retrying in %.1f s, starting with %s", delay, self.schedule.current)
                await asyncio.sleep(delay)

    async def tick_forever(self) -> None:
        while True:
            now = self._loop.time()
            for path in (self.path, self.probe):
                if path is not None:
                    path.tick(now)
            await asyncio.sleep(TICK_INTERVAL)

    async def _attempt(self, target: Target) -> tuple[str, bool]:
        """Connect over one target and stay up while it (or a better path it moved to) works.
        Returns why it ended and whether the tunnel was up."""
        path = await self._resolve(target)
        if isinstance(path, str):
            return path, False
        self.path = path
        try:
            await self.network.follow_path_mtu(path)
            await self._route_around_paths()
            failure = await path.connect()
            if failure is not None:
                return failure, False
            self.state = TunnelState.UP
            self.schedule.connected(self._loop.time())
            log.info("tunnel up over %s", target, extra=fields(
                transport=target.transport, endpoint=format_host_port(*path.endpoint)))
            return await self._stay_up(), True
        finally:
            self.path.close()

    async def _resolve(self, target: Target) -> Path | str:
        """A path to `target` (not yet connected), or why there can be none."""
        try:
            infos = await self._loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as error:
            return f"cannot resolve {target.host}: {error.strerror}"
        return self.new_path(target, str(infos[0][4][0]))

    async def _stay_up(self) -> str:
        """While the live path works, look for a better one and move to it; returns why the
        live path broke."""
        while True:
            assert self.path is not None
            broken = asyncio.ensure_future(self.path.wait_broken())
            better = asyncio.ensure_future(self._find_better_path())
            try:
                await asyncio.wait([broken, better], return_when=asyncio.FIRST_COMPLETED)
            finally:
                broken.cancel()
                better.cancel()
                await asyncio.gather(better, return_exceptions=True)
            if broken.done() and not broken.cancelled():
                if better.done() and not better.cancelled():
                    better.result().close()
                return broken.result()
            self._move_to(better.result())
            await self.network.follow_path_mtu(self.path)
            await self._route_around_paths()

    async def _find_better_path(self) -> Path:
        """Probe the better transports when the schedule says so, one at a time; returns the
        first path that came up. Cancelled when the live path breaks."""
        while True:
            wait = self.schedule.seconds_to_probe(self._loop.time())
            if wait is None:
                self.order.changed.clear()
                await self.order.changed.wait()
                continue
            await asyncio.sleep(wait)
            for target in self.schedule.probes_due(self._loop.time()):
                path = await self._probe(target)
                if path is not None:
                    return path
            self.schedule.probes_failed(self._loop.time())

    async def _probe(self, target: Target) -> Path | None:
        """Try `target` beside the live path; the path once it is up, else None (closed)."""
        path = await self._resolve(target)
        if isinstance(path, str):
            log.debug("probe of %s failed: %s", target, path)
            return None
        self.probe = path
        try:
            await self._route_around_paths()
            failure = await path.connect()
        except BaseException:
            path.close()
            raise
        finally:
            self.probe = None
        if failure is not None:
            path.close()
            log.debug("probe of %s failed: %s", target, failure)
            return None
        return path

    def _move_to(self, path: Path) -> None:
        """Make `path` (a probe that came up) the live one and let the old path go. The server
        follows by itself: its router routes the client's address to the transport that
        reported the newest session."""
        assert self.path is not None
        old, self.path = self.path, path
        old.close()
        self.schedule.moved(path.target, self._loop.time())
        log.info("moved from %s to %s (%s)", old.target.transport, path.target.transport,
                 path.target, extra=fields(transport=path.target.transport,
                                           endpoint=format_host_port(*path.endpoint)))

    async def _route_around_paths(self) -> None:
        await self.network.route_around(
            path.endpoint[0] for path in (self.path, self.probe) if path is not None)
