"""The Linux client process behind `aura client up`: TUN ⇄ WireGuard ⇄ carrier, forever.

It tries the transports in order (see `schedule`), runs the WireGuard handshake over each, and
once a path is up moves packets in batches. While on a fallback it probes the better transports
beside the live path and moves back as soon as one completes a handshake. A path that breaks
(the carrier reports it, or the server stays silent past the liveness limit) is logged at
WARNING with its reason, and the client moves on; it only stops on `down`, SIGTERM/SIGINT, a
config error at start, or a fatal TUN error, each with a log line. A control socket answers
`status` and `down`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from aura_common import ipc
from aura_common import log as aura_log
from aura_common.accounts import own_account_only
from aura_common.config import ClientConfig, format_host_port
from aura_common.control import ControlError, ControlMessage, decode_control
from aura_common.errors import AuraError, ConfigError
from aura_common.log import fields
from aura_common.manifest import Manifest, ManifestError, SignedManifest, parse_body
from aura_common.manifest_store import ManifestStore
from services.client.carriers import CARRIERS
from services.client.dns import SystemDns, detect
from services.client.path import Path, describe
from services.client.routes import Address, plan_tunnel
from services.client.schedule import Schedule, Target, targets
from services.client.tunnel import ClientTun, tun_name

log = logging.getLogger("aura-client")

EXIT_CONFIG = 78
TICK_INTERVAL = 0.25
TUN_READ_LIMIT = 256


class ClientDaemon:
    def __init__(self, config: ClientConfig, dns: SystemDns | None = None) -> None:
        self.config = config
        self.dns = dns or SystemDns(config.dns_state_file, detect())
        self.store = ManifestStore(config.manifest_state_file, config.server.ca_public_key)
        self.manifest_serial = 0
        self.schedule = Schedule(self._targets(self._initial_manifest()))
        self.stop = asyncio.Event()
        self.tun: ClientTun | None = None
        self.path: Path | None = None  # the path that carries traffic (or is being tried)
        self.probe: Path | None = None  # a better transport being tried beside it
        self.bypass: tuple[Address, ...] = ()
        self.control: ControlMessage | None = None
        self.state = "connecting"
        self.last_error: str | None = None
        self.last_handshake: float | None = None  # wall clock, for status
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0}
        self._order_changed = asyncio.Event()
        self._plan_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._fatal: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # -- manifest and transport order ---------------------------------------------------------

    def _initial_manifest(self) -> Manifest | None:
        """The newest of the manifest in the config and the one stored from the server."""
        embedded = self.config.manifest
        if embedded is not None:
            try:
                signed = SignedManifest.from_mapping(embedded)
                if parse_body(signed.body).serial > self.store.serial:
                    self.store.accept(signed)
            except ManifestError as error:
                log.warning("ignoring the manifest in %s: %s", self.config.path, error.detail)
        stored = self.store.stored()
        if stored is None:
            return None
        self.manifest_serial = stored[1].serial
        return stored[1]

    def _targets(self, manifest: Manifest | None) -> list[Target]:
        order = targets(self.config, manifest, list(CARRIERS))
        if not order:
            raise ConfigError(
                self.config.path, "transports.order",
                f"at least one transport this client has ({', '.join(CARRIERS)})",
                list(self.config.transports.order),
            )
        return order

    def _accept_manifest(self, signed: SignedManifest) -> None:
        try:
            manifest = self.store.accept(signed)  # logs refusals and acceptances
        except ManifestError:
            return
        if manifest.serial > self.manifest_serial:
            self.manifest_serial = manifest.serial
            self.schedule.replace_order(self._targets(manifest), time.monotonic())
            self._order_changed.set()
            log.info("transport order from manifest serial %d: %s", manifest.serial,
                     ", ".join(str(t) for t in self.schedule.order))

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        os.makedirs(self.config.runtime_dir, mode=0o700, exist_ok=True)
        listener = await ipc.Listener.start(
            self.config.control_socket, self._serve_control, own_account_only, role="client"
        )
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        try:
            await asyncio.to_thread(self.dns.recover)
            self.tun = ClientTun(tun_name(self.config.name), self.config.interface.mtu)
            await asyncio.to_thread(self.tun.up)
            await self._apply_plan()
            loop.add_reader(self.tun.tun.fileno(), self._tun_readable)
            log.info("tunnel device %s ready (mtu %d); transports: %s", self.tun.name,
                     self.config.interface.mtu, ", ".join(str(t) for t in self.schedule.order))
            tasks = [
                loop.create_task(self._tick_forever()),
                loop.create_task(self._paths_forever()),
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
            for path in (self.probe, self.path):
                if path is not None:
                    path.close()
            async with self._plan_lock:  # not while _apply_plan is changing it
                await asyncio.to_thread(self._restore_dns)
            if self.tun is not None:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(self.tun.tun.fileno())
                self.tun.close()
                log.info("tunnel device %s removed, with its routes", self.tun.name)
            await listener.close()

    async def _paths_forever(self) -> None:
        while True:
            target = self.schedule.current
            self.state = "connecting"
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
                delay = self.schedule.lost(time.monotonic())
            else:
                log.warning("%s failed: %s", target, reason, extra=info)
                delay = self.schedule.failed()
            if delay:
                self.state = "backoff"
                log.warning("retrying in %.1f s, starting with %s", delay, self.schedule.current)
                await asyncio.sleep(delay)

    async def _attempt(self, target: Target) -> tuple[str, bool]:
        """Connect over one target and stay up while it (or a better path it moved to) works.
        Returns why it ended and whether the tunnel was up."""
        path = await self._new_path(target)
        if isinstance(path, str):
            return path, False
        self.path = path
        try:
            await self._follow_path_mtu()
            await self._route_around_paths()
            failure = await path.connect()
            if failure is not None:
                return failure, False
            self.state = "up"
            self.schedule.connected(time.monotonic())
            log.info("tunnel up over %s", target, extra=fields(
                transport=target.transport, endpoint=format_host_port(*path.endpoint)))
            return await self._stay_up(), True
        finally:
            self.path.close()

    async def _new_path(self, target: Target) -> Path | str:
        """A path to `target` (not yet connected), or why there can be none."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as error:
            return f"cannot resolve {target.host}: {error.strerror}"
        return Path(self.config, target, str(infos[0][4][0]), self._received,
                    self._handshaken)

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
            await self._follow_path_mtu()
            await self._route_around_paths()

    async def _find_better_path(self) -> Path:
        """Probe the better transports when the schedule says so, one at a time; returns the
        first path that came up. Cancelled when the live path breaks."""
        while True:
            wait = self.schedule.seconds_to_probe(time.monotonic())
            if wait is None:
                self._order_changed.clear()
                await self._order_changed.wait()
                continue
            await asyncio.sleep(wait)
            for target in self.schedule.probes_due(time.monotonic()):
                path = await self._probe(target)
                if path is not None:
                    return path
            self.schedule.probes_failed(time.monotonic())

    async def _probe(self, target: Target) -> Path | None:
        """Try `target` beside the live path; the path once it is up, else None (closed)."""
        path = await self._new_path(target)
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
        self.schedule.moved(path.target, time.monotonic())
        log.info("moved from %s to %s (%s)", old.target.transport, path.target.transport,
                 path.target, extra=fields(transport=path.target.transport,
                                           endpoint=format_host_port(*path.endpoint)))

    async def _tick_forever(self) -> None:
        while True:
            now = time.monotonic()
            for path in (self.path, self.probe):
                if path is not None:
                    path.tick(now)
            await asyncio.sleep(TICK_INTERVAL)

    # -- data path ----------------------------------------------------------------------------

    def _tun_readable(self) -> None:
        assert self.tun is not None
        try:
            packets = self.tun.tun.read_batch(TUN_READ_LIMIT)
        except OSError as error:
            asyncio.get_running_loop().remove_reader(self.tun.tun.fileno())
            if not self._fatal.done():
                self._fatal.set_result(f"reading {self.tun.name} failed: {error.strerror}")
            return
        if packets and self.path is not None:
            self.counters["tx_packets"] += len(packets)
            self.counters["tx_bytes"] += sum(map(len, packets))
            self.path.send(packets)

    def _handshaken(self) -> None:
        self.last_handshake = time.time()

    def _received(self, packets: list[bytes]) -> None:
        ip_packets = [p for p in packets if p[0] >> 4 in (4, 6)]
        if len(ip_packets) != len(packets):
            for payload in packets:
                if payload[0] >> 4 not in (4, 6):
                    self._control_payload(payload)
        if ip_packets and self.tun is not None:
            self.counters["rx_packets"] += len(ip_packets)
            self.counters["rx_bytes"] += sum(map(len, ip_packets))
            self.tun.tun.write_batch(ip_packets)

    # -- control messages and the kernel's view -----------------------------------------------

    def _control_payload(self, payload: bytes) -> None:
        try:
            message = decode_control(payload)
        except ControlError as error:
            log.warning("ignored a malformed control message: %s", error)
            return
        if message is None:
            log.debug("ignored a payload that is neither IP nor control")
            return
        self.control = message
        task = asyncio.get_running_loop().create_task(self._apply_plan())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if message.manifest is not None:
            self._accept_manifest(message.manifest)

    async def _follow_path_mtu(self) -> None:
        """Give the TUN the MTU the live path's carrier moves unfragmented, so the kernel
        sizes packets (and TCP its MSS) for it: lower on QUIC, the config's on UDP and TCP."""
        assert self.tun is not None and self.path is not None
        mtu = self.path.mtu
        async with self._plan_lock:  # apply() configures the link with self.tun.mtu too
            if mtu == self.tun.mtu:
                return
            try:
                await asyncio.to_thread(self.tun.set_mtu, mtu)
            except AuraError as error:
                log.error("could not set the mtu of %s: %s", self.tun.name, error)
                return
        log.info("mtu of %s is %d for %s", self.tun.name, mtu, self.path.target.transport)

    async def _route_around_paths(self) -> None:
        """Keep the server addresses the paths use out of the tunnel routes, so the carriers'
        own packets never loop into the tunnel."""
        hosts = {path.endpoint[0] for path in (self.path, self.probe) if path is not None}
        self.bypass = tuple(sorted(map(ipaddress.ip_address, hosts), key=str))
        await self._apply_plan()

    async def _apply_plan(self) -> None:
        assert self.tun is not None
        async with self._plan_lock:
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

    def _restore_dns(self) -> None:
        try:
            self.dns.restore()
        except (AuraError, OSError) as error:
            log.error("could not restore the DNS settings: %s", error)

    # -- control socket -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        plan = self.tun.plan if self.tun is not None else None
        live = self.path if self.state == "up" else None
        return {
            "state": self.state,
            "transport": live.target.transport if live else None,
            "endpoint": format_host_port(*live.endpoint) if live else None,
            "last_handshake": self.last_handshake,
            **self.counters,
            "addresses": [str(a) for a in plan.addresses] if plan else [],
            "routes": [str(r) for r in plan.routes] if plan else [],
            "dns": [str(a) for a in plan.dns] if plan else [],
            "dns_applied_with": self.dns.strategy.name if self.dns.applied else None,
            "manifest_serial": self.manifest_serial,
            "tun": self.tun.name if self.tun else None,
            "mtu": self.tun.mtu if self.tun else None,
            "last_error": self.last_error,
            "pid": os.getpid(),
        }

    async def _serve_control(self, channel: ipc.Channel) -> None:
        while True:
            frame = await channel.recv()
            kind = frame.get("t")
            if kind == "status":
                await channel.send_reliable({"t": "status_reply", "status": self.status()})
            elif kind == "down":
                log.info("stopping: down requested over the control socket")
                await channel.send_reliable({"t": "down_reply"})
                self.stop.set()
            else:
                await channel.send_reliable({"t": "error", "message": f"unknown request {kind!r}"})


def log_stray_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's handler for errors no task awaited (a carrier library's callback
    failing after its connection was dropped): one WARNING line, the traceback at DEBUG."""
    message = context.get("message") or "unhandled error in the event loop"
    error = context.get("exception")
    if error is None:
        log.warning("ignored: %s", message)
        return
    log.warning("ignored: %s: %s", message, describe(error))
    log.debug("traceback of the ignored error", exc_info=error)


async def _run(config: ClientConfig) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_stray_exception)
    daemon = ClientDaemon(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stop.set)
    await daemon.run()


def run(config_path: str, *, verbose: bool = False, journal: bool = False) -> int:
    """Run the client in this process until `down` or a signal; returns the exit status.

    `journal`: log to journald when it listens (a detached client has no terminal)."""
    handler = aura_log.setup("aura-client", verbose=verbose)
    if journal and os.path.exists(aura_log.JOURNAL_SOCKET):
        root = logging.getLogger()
        root.removeHandler(handler)
        root.addHandler(aura_log.JournalHandler("aura-client"))
    try:
        config = ClientConfig.load(config_path)
        asyncio.run(_run(config))
    except ConfigError as error:
        log.critical("configuration error: %s", error)
        return EXIT_CONFIG
    except AuraError as error:
        log.critical("stopping: %s", error)
        return 1
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aura-client", description="The Aura Linux client.")
    parser.add_argument("config", help="client config file")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("--journal", action="store_true",
                        help="log to journald when it is available")
    args = parser.parse_args(argv)
    return run(args.config, verbose=args.verbose, journal=args.journal)


if __name__ == "__main__":
    sys.exit(main())
