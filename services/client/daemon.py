"""The Linux client process behind `aura client up`: TUN ⇄ WireGuard ⇄ carrier, forever.

It tries the transports in order (see `schedule`), runs the WireGuard handshake over each, and
once a path is up moves packets in batches. A path that breaks (the carrier reports it, or the
server stays silent past the liveness limit) is logged at WARNING with its reason, and the
client moves on; it only stops on `down`, SIGTERM/SIGINT, a config error at start, or a fatal
TUN error, each with a log line. A control socket answers `status` and `down`.
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
from aura_common.config import ClientConfig, format_host_port
from aura_common.control import ControlError, ControlMessage, decode_control
from aura_common.errors import AuraError, ConfigError
from aura_common.log import fields
from aura_common.manifest import Manifest, ManifestError, SignedManifest, parse_body
from aura_common.manifest_store import ManifestStore
from aura_common.wireguard import (
    Device,
    Dropped,
    Event,
    HandshakeCompleted,
    Peer,
    Received,
    SessionExpired,
    Transmit,
)
from services.client.carriers import CARRIERS, ClientCarrier
from services.client.routes import Address, plan_tunnel
from services.client.schedule import Schedule, Target, targets
from services.client.tunnel import ClientTun, tun_name

log = logging.getLogger("aura-client")

EXIT_CONFIG = 78
TICK_INTERVAL = 0.25
OPEN_TIMEOUT = 5.0
# A handshake gets one retry: REKEY_TIMEOUT (5 s) in all, then the next transport.
HANDSHAKE_RETRY_AFTER = 2.5
HANDSHAKE_TIMEOUT = 5.0
# Silence from the server for the keepalive interval sends a probe (a handshake, which the
# server must answer); this much longer without an answer means the path is broken.
LIVENESS_GRACE = 5.0
DEFAULT_LIVENESS = 25.0
TUN_READ_LIMIT = 256


class ClientDaemon:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.device = Device(config.interface.private_key, mtu=config.interface.mtu)
        self.liveness = float(config.keepalive or DEFAULT_LIVENESS)
        self.store = ManifestStore(config.manifest_state_file, config.server.ca_public_key)
        self.manifest_serial = 0
        self.schedule = Schedule(self._targets(self._initial_manifest()))
        self.stop = asyncio.Event()
        self.tun: ClientTun | None = None
        self.peer: Peer | None = None
        self.carrier: ClientCarrier | None = None
        self.target: Target | None = None
        self.endpoint: tuple[str, int] | None = None
        self.bypass: tuple[Address, ...] = ()
        self.control: ControlMessage | None = None
        self.state = "connecting"
        self.last_error: str | None = None
        self.last_handshake: float | None = None  # wall clock, for status
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0}
        self._handshake_done = asyncio.Event()
        self._plan_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._path_broken: asyncio.Future[str] | None = None
        self._fatal: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._last_heard = 0.0  # monotonic time of the last authenticated datagram
        self._rx_bytes_seen = 0
        self._probe_due = 0.0

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
            self.schedule.replace_order(self._targets(manifest))
            log.info("transport order from manifest serial %d: %s", manifest.serial,
                     ", ".join(str(t) for t in self.schedule.order))

    # -- running ------------------------------------------------------------------------------

    async def run(self) -> None:
        os.makedirs(self.config.runtime_dir, mode=0o700, exist_ok=True)
        listener = await ipc.Listener.start(
            self.config.control_socket, self._serve_control, set(), set(), role="client"
        )
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = []
        try:
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
            self._close_path()
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
        """Connect over one target and stay there while it works. Returns why it ended and
        whether the tunnel was up."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
        except socket.gaierror as error:
            return f"cannot resolve {target.host}: {error.strerror}", False
        address = str(infos[0][4][0])
        await self._keep_out_of_tunnel(address)
        carrier = CARRIERS[target.transport](self.config)
        try:
            await asyncio.wait_for(carrier.open(address, target.port, self._deliver),
                                   OPEN_TIMEOUT)
        except TimeoutError:
            carrier.close()
            return f"no connection within {OPEN_TIMEOUT:.0f} s", False
        except Exception as error:  # any carrier failure means: try the next transport
            carrier.close()
            return _describe(error), False
        self.carrier, self.target, self.endpoint = carrier, target, (address, target.port)
        self._start_session()
        closed = asyncio.ensure_future(carrier.wait_closed())
        try:
            failure = await self._handshake(closed)
            if failure is not None:
                return failure, False
            self.state = "up"
            self.schedule.connected(time.monotonic())
            log.info("tunnel up over %s", target, extra=fields(
                transport=target.transport, endpoint=format_host_port(address, target.port)))
            self._path_broken = loop.create_future()
            done, _ = await asyncio.wait([closed, self._path_broken],
                                         return_when=asyncio.FIRST_COMPLETED)
            return str(done.pop().result()), True
        finally:
            closed.cancel()
            self._close_path()

    async def _handshake(self, closed: asyncio.Future[Any]) -> str | None:
        """None once the handshake completes; else why not."""
        assert self.peer is not None
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._handshake_done.wait())
        try:
            for attempt, wait in enumerate(
                (HANDSHAKE_RETRY_AFTER, HANDSHAKE_TIMEOUT - HANDSHAKE_RETRY_AFTER)
            ):
                if attempt:
                    self._handle(self.device.initiate(self.peer, time.monotonic()))
                await asyncio.wait([waiter, closed], timeout=wait,
                                   return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    return None
                if closed.done():
                    return closed.result()
            return f"no handshake response within {HANDSHAKE_TIMEOUT:.0f} s"
        finally:
            waiter.cancel()

    def _start_session(self) -> None:
        """A fresh peer: each transport process holds its own sessions, so keys from another
        path are useless here."""
        server = self.config.server
        self.device.remove_peer(server.public_key)
        self.peer = self.device.add_peer(
            server.public_key, preshared_key=server.preshared_key, endpoint=self.endpoint,
            keepalive=self.config.keepalive or None,
        )
        self._handshake_done.clear()
        now = time.monotonic()
        self._last_heard, self._rx_bytes_seen, self._probe_due = now, 0, now
        self._handle(self.device.initiate(self.peer, now))

    def _close_path(self) -> None:
        if self.carrier is not None:
            self.carrier.close()
        if self.peer is not None:
            self.device.remove_peer(self.peer.public_key)
        self.carrier = self.peer = None
        self._path_broken = None

    def _break_path(self, reason: str) -> None:
        if self._path_broken is not None and not self._path_broken.done():
            self._path_broken.set_result(reason)

    async def _tick_forever(self) -> None:
        while True:
            now = time.monotonic()
            self._handle(self.device.tick(now))
            if self.state == "up" and self.peer is not None:
                self._check_liveness(self.peer, now)
            await asyncio.sleep(TICK_INTERVAL)

    def _check_liveness(self, peer: Peer, now: float) -> None:
        if peer.rx_bytes != self._rx_bytes_seen:
            self._rx_bytes_seen, self._last_heard = peer.rx_bytes, now
        silent = now - self._last_heard
        if silent >= self.liveness + LIVENESS_GRACE:
            self._break_path(f"nothing from the server for {silent:.0f} s")
        elif silent >= self.liveness and now >= self._probe_due:
            self._probe_due = now + HANDSHAKE_RETRY_AFTER
            self._handle(self.device.initiate(peer, now))

    # -- data path ----------------------------------------------------------------------------

    def _deliver(self, datagrams: list[bytes]) -> None:
        if self.endpoint is not None:
            self._handle(self.device.receive(datagrams, self.endpoint, time.monotonic()))

    def _tun_readable(self) -> None:
        assert self.tun is not None
        try:
            packets = self.tun.tun.read_batch(TUN_READ_LIMIT)
        except OSError as error:
            asyncio.get_running_loop().remove_reader(self.tun.tun.fileno())
            if not self._fatal.done():
                self._fatal.set_result(f"reading {self.tun.name} failed: {error.strerror}")
            return
        if packets and self.peer is not None:
            self.counters["tx_packets"] += len(packets)
            self.counters["tx_bytes"] += sum(map(len, packets))
            self._handle(self.device.send(self.peer, packets, time.monotonic()))

    def _handle(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Transmit):
                if self.carrier is not None:
                    self.carrier.transmit(event.datagrams)
            elif isinstance(event, Received):
                self._received(event.packets)
            elif isinstance(event, HandshakeCompleted):
                self.last_handshake = time.time()
                self._last_heard = time.monotonic()
                self._handshake_done.set()
                log.debug("handshake completed")
            elif isinstance(event, SessionExpired):
                log.debug("session expired")
            elif isinstance(event, Dropped):
                log.debug("dropped a datagram: %s", event.reason)

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

    async def _keep_out_of_tunnel(self, address: str) -> None:
        self.bypass = (ipaddress.ip_address(address),)
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
        if added or removed:
            log.info("addresses on %s: %s", self.tun.name,
                     ", ".join(map(str, plan.addresses)) or "none yet (waiting for the server)")
        log.debug("%d routes through %s", len(plan.routes), self.tun.name)

    # -- control socket -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        plan = self.tun.plan if self.tun is not None else None
        return {
            "state": self.state,
            "transport": self.target.transport if self.state == "up" and self.target else None,
            "endpoint": (format_host_port(*self.endpoint)
                         if self.state == "up" and self.endpoint else None),
            "last_handshake": self.last_handshake,
            **self.counters,
            "addresses": [str(a) for a in plan.addresses] if plan else [],
            "routes": [str(r) for r in plan.routes] if plan else [],
            "dns": [str(a) for a in plan.dns] if plan else [],
            "manifest_serial": self.manifest_serial,
            "tun": self.tun.name if self.tun else None,
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


def _describe(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{text} ({type(error).__name__})"


async def _run(config: ClientConfig) -> None:
    daemon = ClientDaemon(config)
    loop = asyncio.get_running_loop()
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
