"""The send path: packets for a peer sealed on its current keys, or staged for a handshake.

Per packet: padding, one struct pack and one AEAD call on the cipher object the keypair
caches; the peer's counters and timers are updated once per call.
"""

from __future__ import annotations

from collections.abc import Sequence

from .constants import (
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from .events import Event, Transmit
from .messages import TRANSPORT_HEADER
from .peer import Peer

# What `send` leaves to the caller: nothing, a handshake for the packets it staged, or one to
# rekey (the keys it used are due for replacement).
SENT = 0
STAGED = 1
REKEY = 2

_NONCE_PREFIX = bytes(4)
_ZEROS = bytes(16)


def send(peer: Peer, packets: Sequence[bytes], now: float, mtu: int, events: list[Event]) -> int:
    """Seals `packets` (b"" is a keepalive) for `peer` and appends their `Transmit`."""
    keypair = peer.current
    endpoint = peer.endpoint
    sender = keypair.sender if keypair is not None else None
    if (keypair is None or sender is None or endpoint is None
            or now - keypair.created >= REJECT_AFTER_TIME
            or keypair.send_counter + len(packets) >= REJECT_AFTER_MESSAGES):
        peer.stage(packets)
        return STAGED
    pack_header = TRANSPORT_HEADER.pack
    seal = sender.encrypt
    remote_index = keypair.remote_index
    counter = keypair.send_counter
    datagrams = []
    size = 0
    has_data = False
    for packet in packets:
        length = len(packet)
        if length:
            has_data = True
            # Padded to a multiple of 16, not past the MTU (whitepaper 5.4.6).
            unit = length % mtu if length > mtu else length
            padding = min((unit + 15) & ~15, mtu) - unit
            if padding:
                packet = packet + _ZEROS[:padding]
        header = pack_header(MESSAGE_TRANSPORT, remote_index, counter)
        datagram = header + seal(_NONCE_PREFIX + header[8:], packet, None)
        datagrams.append(datagram)
        size += len(datagram)
        counter += 1
    keypair.send_counter = counter
    peer.tx_bytes += size
    peer.timers.sent(now, has_data)
    events.append(Transmit(endpoint, datagrams))
    if counter >= REKEY_AFTER_MESSAGES or (
        keypair.is_initiator and now - keypair.created >= REKEY_AFTER_TIME
    ):
        return REKEY
    return SENT
