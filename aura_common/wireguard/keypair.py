"""Transport keypairs: one cached AEAD per direction, send counter, sliding replay window."""

from __future__ import annotations

from array import array

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import REJECT_AFTER_MESSAGES
from .limits import REPLAY_WINDOW
from .noise import TransportKeys

# The window is a ring of 64-bit blocks (as in the kernel and wireguard-go): updating it touches
# one small int per packet, where one big bitmap int would be copied whole on every change.
# The blocks are one flat array of unsigned 64-bit words (1 KiB a keypair), not a list of ints:
# a list holds a separate 36-byte int per filled block, 4.6 KiB more once a session has
# carried a window's worth of packets.
_BLOCK_SHIFT = 6
_BLOCK_MASK = (1 << _BLOCK_SHIFT) - 1
_RING_BLOCKS = (REPLAY_WINDOW >> _BLOCK_SHIFT) + 1


class Keypair:
    __slots__ = (
        "created",
        "highest_counter",
        "is_initiator",
        "local_index",
        "receiver",
        "remote_index",
        "send_counter",
        "sender",
        "ticket",
        "window_ring",
    )

    def __init__(self, keys: TransportKeys, *, local_index: int, remote_index: int,
                 is_initiator: bool, created: float) -> None:
        self.sender: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.send)
        self.receiver: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.receive)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        self.highest_counter = 0
        self.window_ring = array("Q", bytes(8 * _RING_BLOCKS))
        self.ticket = b""  # the handshake authority's proof of this handshake, opaque here

    def accept_counter(self, counter: int) -> bool:
        """Records an authenticated counter; False if it was seen or is more than
        REPLAY_WINDOW behind the highest one."""
        ring = self.window_ring
        block = counter >> _BLOCK_SHIFT
        highest = self.highest_counter
        if counter > highest:
            if counter >= REJECT_AFTER_MESSAGES:
                return False
            current = highest >> _BLOCK_SHIFT
            if block != current:  # entering new blocks: forget what they held a lap ago
                for skipped in range(current + 1, current + 1 + min(block - current, _RING_BLOCKS)):
                    ring[skipped % _RING_BLOCKS] = 0
            self.highest_counter = counter
        elif highest - counter > REPLAY_WINDOW:
            return False
        slot = block % _RING_BLOCKS
        bit = 1 << (counter & _BLOCK_MASK)
        if ring[slot] & bit:
            return False
        ring[slot] |= bit
        return True

    def retire(self) -> None:
        """The keypair is now the previous one: data still in flight may arrive on it, but
        nothing is sent on it again, so its send cipher (2 KiB of OpenSSL state) goes."""
        self.sender = None

    def erase(self) -> None:
        """Drops the cipher objects; Python cannot wipe the key bytes they hold in memory."""
        self.sender = None
        self.receiver = None
