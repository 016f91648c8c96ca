"""The handshake authority: the one holder of the static private key and the preshared keys.

A server transport's device holds no secret (`Device(public_key=...)`): it checks what needs
none (mac1, cookies and the rate limit under load) and hands each admitted initiation out as a
`HandshakeRequested` event. Its driver carries the message to the authority (in Aura: the
router), which authenticates it, refuses replays, floods and peers that may not connect, and
answers with the response message and the session keys for the device that asked alone
(`Device.complete_handshake`). A device with the private key runs one in-process.

Each answer carries a ticket: a MAC, under a key derived from the static key, over the carrier
that asked, the peer, the peer's keys (`keys_tag`) and the time. A carrier later claiming the
session shows it, so only a handshake the authority itself answered for that carrier, with the
keys the peer has now, can be claimed, also after the authority restarted (the static key, and
with it the ticket key, stays).
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import AuraError
from .constants import KEY_SIZE, REJECT_AFTER_TIME
from .cookie import mac1_key
from .crypto import blake2s_hash, dh, keyed_mac, public_key
from .limits import INITIATION_MIN_INTERVAL
from .messages import INITIATION_MAC1_OFFSET, MAC_SIZE, Initiation
from .noise import (
    HandshakeError,
    TransportKeys,
    consume_initiation,
    create_response,
    initial_hash_for,
)

_TICKET_LABEL = b"aura session ticket"
_KEYS_LABEL = b"aura peer keys"
_TICKET_TIME = struct.Struct("!Q")  # milliseconds since the Unix epoch
TICKET_SIZE = _TICKET_TIME.size + 16
# A ticket is shown when the session's first data arrives, or again after the authority
# restarted, within the life of the keys it belongs to; a little clock step is forgiven.
TICKET_LIFETIME = REJECT_AFTER_TIME
TICKET_CLOCK_SLACK = 2.0


class Replayed(HandshakeError):
    """An initiation a known peer made, seen again or too soon after its last: it
    authenticated, so its source is not to blame for it (anyone may have replayed it)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A completed responder handshake, for the device that carried the initiation."""

    peer_public: bytes
    response: bytes  # the response message with zero macs: the carrier's device adds them
    keys: TransportKeys
    remote_index: int  # the initiator's sender index
    ticket: bytes


class _Known:
    __slots__ = ("keys_tag", "last_initiation_at", "last_timestamp", "preshared_key",
                 "static_static")

    def __init__(self, static_static: bytes, preshared_key: bytes | None,
                 keys_tag: bytes) -> None:
        self.static_static = static_static
        self.preshared_key = preshared_key
        self.keys_tag = keys_tag
        self.last_timestamp = b""
        self.last_initiation_at = float("-inf")


class HandshakeAuthority:
    def __init__(self, private_key: bytes, *,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        if len(private_key) != KEY_SIZE:
            raise AuraError(
                f"WireGuard private key must be {KEY_SIZE} bytes, got {len(private_key)}"
            )
        self._static = X25519PrivateKey.from_private_bytes(private_key)
        self.public_key = public_key(private_key)
        self._initial_hash = initial_hash_for(self.public_key)
        self._mac1_key = mac1_key(self.public_key)
        self._ticket_key = blake2s_hash(_TICKET_LABEL, private_key)
        self._keys_key = blake2s_hash(_KEYS_LABEL, private_key)
        self._rng = rng
        self._peers: dict[bytes, _Known] = {}
        # The newest initiation timestamp seen per peer, kept across restarts by the caller
        # (`replay_state`): a carrier that saw an initiation must not get keys for it again.
        self._timestamps: dict[bytes, bytes] = {}
        self.replay_state_changed = False

    # -- peers ----------------------------------------------------------------------------
    def add_peer(self, public: bytes, preshared_key: bytes | None = None) -> None:
        if len(public) != KEY_SIZE:
            raise AuraError(f"WireGuard public key must be {KEY_SIZE} bytes, got {len(public)}")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise AuraError(f"WireGuard preshared key must be {KEY_SIZE} bytes")
        try:
            static_static = dh(self._static, public)
        except ValueError as error:
            raise AuraError(f"WireGuard public key {public.hex()} is unusable") from error
        # No preshared key is the all-zero one (Noise_IKpsk2): the same keys, the same tag.
        tag = keyed_mac(self._keys_key, public + (preshared_key or bytes(KEY_SIZE)))
        known = self._peers[public] = _Known(static_static, preshared_key, tag)
        known.last_timestamp = self._timestamps.get(public, b"")

    def remove_peer(self, public: bytes) -> None:
        self._peers.pop(public, None)

    def set_peers(self, peers: Mapping[bytes, bytes | None]) -> list[bytes]:
        """Exactly these peers (public key -> preshared key) may complete a handshake now.

        Peers kept unchanged keep their replay state. Returns the public keys refused as
        unusable (the rest are in force).
        """
        for public in [p for p in self._peers if p not in peers]:
            del self._peers[public]
        unusable = []
        for public, preshared_key in peers.items():
            known = self._peers.get(public)
            if known is not None and known.preshared_key == preshared_key:
                continue
            try:
                self.add_peer(public, preshared_key)
            except AuraError:
                self._peers.pop(public, None)
                unusable.append(public)
        return unusable

    def __contains__(self, public: bytes) -> bool:
        return public in self._peers

    def keys_tag(self, public: bytes) -> bytes:
        """A MAC over the keys `public` completes handshakes with (its public and preshared
        key), empty for a peer refused: it changes exactly when they do, so a carrier told it
        drops the peer's session keys when the operator replaces either key, and it says
        nothing about the preshared key to whoever reads it."""
        known = self._peers.get(public)
        return b"" if known is None else known.keys_tag

    # -- replay state ---------------------------------------------------------------------
    def replay_state(self) -> dict[bytes, bytes]:
        """The newest initiation timestamp answered per peer (public key -> TAI64N), for
        `restore_replay_state` after a restart. Clears `replay_state_changed`."""
        self.replay_state_changed = False
        return dict(self._timestamps)

    def restore_replay_state(self, timestamps: Mapping[bytes, bytes]) -> None:
        """Timestamps saved before a restart: an initiation at or before them is a replay."""
        for public, timestamp in timestamps.items():
            if timestamp > self._timestamps.get(public, b""):
                self._timestamps[public] = timestamp
                known = self._peers.get(public)
                if known is not None:
                    known.last_timestamp = timestamp

    # -- handshakes -----------------------------------------------------------------------
    def answer(self, initiation: bytes, local_index: int, carrier: str, now: float,
               wall: float) -> Answer:
        """Authenticate an initiation and build the response, with `local_index` as ours.

        `now` is a monotonic clock (the flood check), `wall` Unix time (the ticket). Raises
        `HandshakeError` (or `MessageError` for a malformed message): bad mac1, unknown peer,
        failed authentication, a replayed timestamp, or a second initiation too soon.
        """
        message = Initiation.unpack(initiation)
        # The carrier checked mac1 already; the authority does not take its word for it.
        mac1 = keyed_mac(self._mac1_key, initiation[:INITIATION_MAC1_OFFSET])
        if not hmac.compare_digest(
            mac1, initiation[INITIATION_MAC1_OFFSET : INITIATION_MAC1_OFFSET + MAC_SIZE]
        ):
            raise HandshakeError("bad mac1")
        consumed = consume_initiation(message, local_static=self._static,
                                      local_initial_hash=self._initial_hash,
                                      static_static_for=self._static_static_for)
        known = self._peers[consumed.initiator_public]
        if consumed.timestamp <= known.last_timestamp:
            raise Replayed("replayed initiation")
        if now - known.last_initiation_at < INITIATION_MIN_INTERVAL:
            raise Replayed("initiation flood")
        known.last_timestamp = consumed.timestamp
        known.last_initiation_at = now
        self._timestamps[consumed.initiator_public] = consumed.timestamp
        self.replay_state_changed = True
        ephemeral = X25519PrivateKey.from_private_bytes(self._rng(KEY_SIZE))
        response, keys = create_response(consumed, ephemeral=ephemeral,
                                         preshared_key=known.preshared_key,
                                         local_index=local_index)
        return Answer(consumed.initiator_public, response.pack(), keys, consumed.sender,
                      self.ticket(carrier, consumed.initiator_public, wall))

    def _static_static_for(self, initiator_public: bytes) -> bytes | None:
        known = self._peers.get(initiator_public)
        return None if known is None else known.static_static

    # -- tickets --------------------------------------------------------------------------
    def ticket(self, carrier: str, peer_public: bytes, wall: float) -> bytes:
        issued = _TICKET_TIME.pack(int(wall * 1000))
        return issued + self._ticket_mac(carrier, peer_public, issued)

    @staticmethod
    def ticket_issued(ticket: bytes) -> float:
        """When a (valid) ticket was issued, Unix time: of two, the later handshake's."""
        return float(_TICKET_TIME.unpack(ticket[: _TICKET_TIME.size])[0] / 1000)

    def ticket_valid(self, ticket: bytes, carrier: str, peer_public: bytes,
                     wall: float) -> bool:
        """Whether `ticket` is one this authority issued to `carrier` for `peer_public`, for
        a handshake with the peer's present keys whose session keys may still be in use at
        `wall`."""
        if len(ticket) != TICKET_SIZE or peer_public not in self._peers:
            return False
        issued = ticket[: _TICKET_TIME.size]
        if not hmac.compare_digest(ticket[_TICKET_TIME.size :],
                                   self._ticket_mac(carrier, peer_public, issued)):
            return False
        age = wall - _TICKET_TIME.unpack(issued)[0] / 1000
        return -TICKET_CLOCK_SLACK <= age <= TICKET_LIFETIME + TICKET_CLOCK_SLACK

    def _ticket_mac(self, carrier: str, peer_public: bytes, issued: bytes) -> bytes:
        carrier_bytes = carrier.encode()
        return keyed_mac(self._ticket_key, bytes([len(carrier_bytes)]) + carrier_bytes
                         + peer_public + self.keys_tag(peer_public) + issued)
