"""What the core asks its driver to do, or tells it happened."""

from __future__ import annotations

from dataclasses import dataclass

from ..addresses import Endpoint
from .peer import Peer


@dataclass(slots=True)
class Transmit:
    """Send each datagram to `destination`."""

    destination: Endpoint
    datagrams: list[bytes]


@dataclass(slots=True)
class Received:
    """Decrypted payloads from one peer: IP packets (padding removed) or control messages."""

    peer: Peer
    packets: list[bytes]


@dataclass(slots=True)
class HandshakeRequested:
    """An admitted initiation for the handshake authority; answer with
    `Device.complete_handshake(local_index, ...)` or `Device.refuse_handshake`."""

    initiation: bytes
    local_index: int
    source: Endpoint


@dataclass(slots=True)
class HandshakeCompleted:
    peer: Peer


@dataclass(slots=True)
class SessionExpired:
    """The peer has no usable keys any more."""

    peer: Peer


@dataclass(slots=True)
class Dropped:
    reason: str
    source: Endpoint | None


Event = (Transmit | Received | HandshakeRequested | HandshakeCompleted | SessionExpired
         | Dropped)
