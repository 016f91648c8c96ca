"""One path to the server: a carrier and a WireGuard `Device` of its own, for one target.

The live path and a probe for a better transport are two of these side by side: the same keys,
separate handshakes, so a probe never disturbs the session that carries traffic. Each server
transport holds its own sessions, which is why every path starts with a fresh handshake.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aura_common.config import ClientConfig
from aura_common.wireguard import (
    Device,
    Dropped,
    Event,
    HandshakeCompleted,
    Received,
    SessionExpired,
    Transmit,
)
from services.client.carriers.base import CarrierFactory
from services.client.schedule import Target

log = logging.getLogger("aura-client")

OPEN_TIMEOUT = 5.0
# A handshake gets one retry: REKEY_TIMEOUT (5 s) in all, then the next transport.
HANDSHAKE_RETRY_AFTER = 2.5
HANDSHAKE_TIMEOUT = 5.0
# Silence from the server for the keepalive interval sends a probe (a handshake, which the
# server must answer); this much longer without an answer means the path is broken.
LIVENESS_GRACE = 5.0
DEFAULT_LIVENESS = 25.0


class Path:
    """`mtu` is the TUN MTU this path wants while it is live. `received` gets the decrypted
    payloads (IP packets and control messages) and `handshaken` is called on every completed
    handshake; both from the event loop. `carriers` builds the carrier for `target.transport`.
    Time is the event loop's clock."""

    def __init__(self, config: ClientConfig, target: Target, address: str,
                 carriers: Mapping[str, CarrierFactory],
                 received: Callable[[list[bytes]], None], handshaken: Callable[[], None]) -> None:
        server = config.server
        self.target = target
        self.endpoint = (address, target.port)
        self.liveness = float(config.keepalive or DEFAULT_LIVENESS)
        self.carrier = carriers[target.transport](config)
        self.mtu = tunnel_mtu(config.interface.mtu, self.carrier.tunnel_mtu)
        self.device = Device(config.interface.private_key, mtu=self.mtu)
        self.peer = self.device.add_peer(
            server.public_key, preshared_key=server.preshared_key, endpoint=self.endpoint,
            keepalive=config.keepalive or None,
        )
        self._received, self._handshaken = received, handshaken
        self._handshake_done = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._broken: asyncio.Future[str] = self._loop.create_future()
        self._carrier_closed: asyncio.Future[str] | None = None
        self._up = False
        self._last_heard = self._probe_due = 0.0  # monotonic
        self._rx_bytes_seen = 0

    async def connect(self) -> str | None:
        """Open the carrier and complete a handshake over it; None once up, else why not.

        Bounded: `OPEN_TIMEOUT` plus `HANDSHAKE_TIMEOUT` at most."""
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the open completes, and the client's stop would then wait on it.
            async with asyncio.timeout(OPEN_TIMEOUT):
                await self.carrier.open(*self.endpoint, self._deliver)
        except TimeoutError:
            return f"no connection within {OPEN_TIMEOUT:.0f} s"
        except Exception as error:  # any carrier failure means: this target does not work
            return describe(error)
        self._carrier_closed = asyncio.ensure_future(self.carrier.wait_closed())
        self._carrier_closed.add_done_callback(self._carrier_done)
        failure = await self._handshake()
        if failure is None:
            self._up = True
            self._last_heard = self._probe_due = self._loop.time()
        return failure

    async def _handshake(self) -> str | None:
        waiter: asyncio.Future[Any] = asyncio.ensure_future(self._handshake_done.wait())
        try:
            for wait in (HANDSHAKE_RETRY_AFTER, HANDSHAKE_TIMEOUT - HANDSHAKE_RETRY_AFTER):
                self.handle(self.device.initiate(self.peer, self._loop.time()))
                await asyncio.wait([waiter, self._broken], timeout=wait,
                                   return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    return None
                if self._broken.done():
                    return self._broken.result()
            return f"no handshake response within {HANDSHAKE_TIMEOUT:.0f} s"
        finally:
            waiter.cancel()

    async def wait_broken(self) -> str:
        """Why the path stopped working: the carrier broke, or the server fell silent."""
        return await asyncio.shield(self._broken)

    def close(self) -> None:
        self.carrier.close()
        if self._carrier_closed is not None:
            self._carrier_closed.cancel()
        self.device.remove_peer(self.peer.public_key)  # zeroes the session keys
        self._break("closed by the client")

    # -- driven by the daemon -----------------------------------------------------------------

    def send(self, packets: list[bytes]) -> None:
        self.handle(self.device.send(self.peer, packets, self._loop.time()))

    def tick(self, now: float) -> None:
        self.handle(self.device.tick(now))
        if self._up:
            self._check_liveness(now)

    def _check_liveness(self, now: float) -> None:
        if self.peer.rx_bytes != self._rx_bytes_seen:
            self._rx_bytes_seen, self._last_heard = self.peer.rx_bytes, now
        silent = now - self._last_heard
        if silent >= self.liveness + LIVENESS_GRACE:
            self._break(f"nothing from the server for {silent:.0f} s")
        elif silent >= self.liveness and now >= self._probe_due:
            self._probe_due = now + HANDSHAKE_RETRY_AFTER
            self.handle(self.device.initiate(self.peer, now))

    def _deliver(self, datagrams: list[bytes]) -> None:
        self.handle(self.device.receive(datagrams, self.endpoint, self._loop.time()))

    def handle(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Transmit):
                self.carrier.transmit(event.datagrams)
            elif isinstance(event, Received):
                self._received(event.packets)
            elif isinstance(event, HandshakeCompleted):
                self._last_heard = self._loop.time()
                self._handshake_done.set()
                self._handshaken()
                log.debug("handshake completed over %s", self.target)
            elif isinstance(event, SessionExpired):
                log.debug("session over %s expired", self.target)
            elif isinstance(event, Dropped):
                log.debug("dropped a datagram: %s", event.reason)

    def _carrier_done(self, closed: asyncio.Future[str]) -> None:
        if not closed.cancelled():
            error = closed.exception()
            self._break(closed.result() if error is None else describe(error))

    def _break(self, reason: str) -> None:
        if not self._broken.done():
            self._broken.set_result(reason)


def tunnel_mtu(configured: int, carrier_ceiling: int | None) -> int:
    """The TUN MTU while a path is live: the config's, lowered to what its carrier moves
    without fragmentation."""
    return configured if carrier_ceiling is None else min(configured, carrier_ceiling)


def describe(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return f"{text} ({type(error).__name__})"
