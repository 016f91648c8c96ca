"""Transport keypairs: one cached AEAD per direction, send counter, sliding replay window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW

if TYPE_CHECKING:
    from .device import Peer
    from .noise import TransportKeys

_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class Keypair:
    __slots__ = (
        "created",
        "highest_counter",
        "is_initiator",
        "local_index",
        "peer",
        "receiver",
        "remote_index",
        "send_counter",
        "sender",
        "window",
    )

    def __init__(self, peer: Peer, keys: TransportKeys, *, local_index: int, remote_index: int,
                 is_initiator: bool, created: float) -> None:
        self.peer = peer
        self.sender: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.send)
        self.receiver: ChaCha20Poly1305 | None = ChaCha20Poly1305(keys.receive)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        # Bit i of `window` records counter (highest_counter - i).
        self.highest_counter = -1
        self.window = 0

    def accept_counter(self, counter: int) -> bool:
        """Records an authenticated counter; False if it was seen or fell behind the window."""
        ahead = counter - self.highest_counter
        if ahead > 0:
            if counter >= REJECT_AFTER_MESSAGES:
                return False
            if ahead < REPLAY_WINDOW:
                self.window = ((self.window << ahead) | 1) & _WINDOW_MASK
            else:
                self.window = 1
            self.highest_counter = counter
            return True
        behind = -ahead
        if behind >= REPLAY_WINDOW:
            return False
        bit = 1 << behind
        if self.window & bit:
            return False
        self.window |= bit
        return True

    def erase(self) -> None:
        """Drops the cipher objects; Python cannot wipe the key bytes they hold in memory."""
        self.sender = None
        self.receiver = None
