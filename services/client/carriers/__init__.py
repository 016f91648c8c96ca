"""Client carriers: how WireGuard messages travel between the client and the server.

A carrier only moves opaque WireGuard datagrams; the handshake, encryption and timers live in
the client's `Device`. Each transport module registers its class in `CARRIERS`; modules that
are not present (or cannot import their dependencies) simply leave their transport out.
"""

from __future__ import annotations

import importlib
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

CARRIERS: dict[str, CarrierFactory] = {}


def _register_present() -> None:
    for name in ("udp", "quic", "tcp"):
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ImportError as error:
            # Only a missing carrier module is optional; a broken one must not hide.
            if error.name != f"{__name__}.{name}":
                raise
            continue
        CARRIERS[name] = module.Carrier


_register_present()
