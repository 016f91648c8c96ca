"""The WireGuard protocol core: I/O-free, byte-compatible with stock WireGuard.

Datagrams and time go in, events come out; drivers own sockets, TUN devices and clocks.
"""

from .crypto import generate_private_key, public_key
from .device import Device, Peer
from .events import Dropped, Endpoint, Event, HandshakeCompleted, Received, SessionExpired, Transmit

__all__ = [
    "Device",
    "Dropped",
    "Endpoint",
    "Event",
    "HandshakeCompleted",
    "Peer",
    "Received",
    "SessionExpired",
    "Transmit",
    "generate_private_key",
    "public_key",
]
