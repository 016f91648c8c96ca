"""The WireGuard protocol core: I/O-free, byte-compatible with stock WireGuard.

Datagrams and time go in, events come out; drivers own sockets, TUN devices and clocks.
"""

from .authority import Answer, HandshakeAuthority
from .crypto import generate_private_key, public_key
from .device import Device
from .events import (
    Dropped,
    Endpoint,
    Event,
    HandshakeCompleted,
    HandshakeRequested,
    Received,
    SessionExpired,
    Transmit,
)
from .peer import Peer

__all__ = [
    "Answer",
    "Device",
    "Dropped",
    "Endpoint",
    "Event",
    "HandshakeAuthority",
    "HandshakeCompleted",
    "HandshakeRequested",
    "Peer",
    "Received",
    "SessionExpired",
    "Transmit",
    "generate_private_key",
    "public_key",
]
