"""What every client carrier is: the protocol the client drives, and the lifecycle they share.

A carrier only moves opaque WireGuard datagrams; the handshake, encryption and timers live in
the client's `Device`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from aura_common.config import ClientConfig

Deliver = Callable[[list[bytes]], None]

# What WireGuard adds to a tunnel packet: the 16-byte transport header and the 16-byte tag.
WIREGUARD_OVERHEAD = 32
# WireGuard pads packets to a multiple of this, but never beyond the tunnel MTU.
WIREGUARD_PADDING = 16


def tunnel_mtu_within(message_size: int) -> int:
    """The largest tunnel MTU whose every packet, padded and sealed by WireGuard, is a message
    of at most `message_size` bytes. A multiple of the padding unit, so that padding a packet
    of any size never reaches past it."""
    return (message_size - WIREGUARD_OVERHEAD) // WIREGUARD_PADDING * WIREGUARD_PADDING


class ClientCarrier(Protocol):
    """One attempt at one path. The client builds a fresh carrier per attempt with
    `CARRIERS[name](config)` (an `aura_common.config.ClientConfig`: TLS/QUIC carriers take the
    server name and CA key from it) and calls `open` once."""

    name: str  # "udp" | "quic" | "tcp"
    # The largest tunnel MTU this carrier moves without IP fragmentation on a 1500-byte path,
    # or None where the config's interface.mtu is the only bound.
    tunnel_mtu: int | None

    def __init__(self, config: ClientConfig) -> None: ...

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        """Connect to the server; raise OSError, ConnectionError or TimeoutError on failure.

        `host` is the IP address the client resolved (so it can keep that address out of the
        tunnel routes); take the TLS server name from the config, not from `host`.

        After `open` returns, every batch of WireGuard messages from the server is passed to
        `deliver` (called from the event loop)."""
        ...

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        """Send WireGuard messages to the server; never blocks (drops when congested)."""
        ...

    async def wait_closed(self) -> str:
        """Return the reason once the path breaks (connection reset, TLS alert, ...)."""
        ...

    def close(self) -> None:
        """Release the path; `wait_closed` then returns."""
        ...


# Builds a fresh carrier for one attempt from the client config.
CarrierFactory = Callable[["ClientConfig"], ClientCarrier]


class CarrierLifecycle:
    """The end of a path, the same for every carrier: `open` calls `_opening`, whoever sees
    the path fail calls `broken` with the reason, and `wait_closed` returns that reason.
    A carrier releases its sockets and tasks in `_release`."""

    def __init__(self) -> None:
        self._closed: asyncio.Future[str] | None = None

    def _opening(self) -> None:
        self._closed = asyncio.get_running_loop().create_future()

    async def wait_closed(self) -> str:
        assert self._closed is not None, "open() first"
        return await asyncio.shield(self._closed)

    def broken(self, reason: str) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)
        self._release()

    def close(self) -> None:
        self.broken("closed by the client")

    def _release(self) -> None:
        raise NotImplementedError
