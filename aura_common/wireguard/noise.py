"""Noise_IKpsk2 as WireGuard uses it: the two handshake messages and the transport keys.

Pure functions over explicit state; the device decides when to call them and what to keep.
Every failure (bad DH input, failed authentication) surfaces as `HandshakeError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .constants import CONSTRUCTION, IDENTIFIER, KEY_SIZE
from .crypto import aead_open, aead_seal, blake2s_hash, dh, kdf1, kdf2, kdf3
from .messages import Initiation, Response

INITIAL_CHAINING_KEY = blake2s_hash(CONSTRUCTION)
INITIAL_HASH = blake2s_hash(INITIAL_CHAINING_KEY, IDENTIFIER)
NO_PRESHARED_KEY = bytes(KEY_SIZE)


class HandshakeError(Exception):
    """The message does not authenticate or carries an unusable key."""


def initial_hash_for(responder_public: bytes) -> bytes:
    """H after mixing in the responder's static key; the same for every handshake with it."""
    return blake2s_hash(INITIAL_HASH, responder_public)


@dataclass(slots=True)
class InitiatorState:
    """What the initiator keeps between sending an initiation and receiving the response."""

    local_index: int
    ephemeral: X25519PrivateKey
    hash: bytes
    chaining_key: bytes


@dataclass(slots=True)
class ConsumedInitiation:
    initiator_public: bytes
    timestamp: bytes
    sender: int
    ephemeral_public: bytes
    hash: bytes
    chaining_key: bytes


@dataclass(slots=True)
class TransportKeys:
    send: bytes
    receive: bytes


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return dh(private, public)
    except ValueError as error:  # low-order point: the shared secret would be all zeros
        raise HandshakeError("unusable public key") from error


def _open(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return aead_open(key, 0, ciphertext, aad)
    except InvalidTag as error:
        raise HandshakeError("authentication failed") from error


def create_initiation(
    *,
    local_static_public: bytes,
    responder_initial_hash: bytes,
    responder_public: bytes,
    static_static: bytes,
    ephemeral: X25519PrivateKey,
    timestamp: bytes,
    local_index: int,
) -> tuple[Initiation, InitiatorState]:
    """Build an initiation (macs left zero) and the state needed to read the response."""
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    hash_ = blake2s_hash(responder_initial_hash, ephemeral_public)
    chaining_key = kdf1(INITIAL_CHAINING_KEY, ephemeral_public)
    chaining_key, key = kdf2(chaining_key, _exchange(ephemeral, responder_public))
    encrypted_static = aead_seal(key, 0, local_static_public, hash_)
    hash_ = blake2s_hash(hash_, encrypted_static)
    chaining_key, key = kdf2(chaining_key, static_static)
    encrypted_timestamp = aead_seal(key, 0, timestamp, hash_)
    hash_ = blake2s_hash(hash_, encrypted_timestamp)
    message = Initiation(local_index, ephemeral_public, encrypted_static, encrypted_timestamp)
    return message, InitiatorState(local_index, ephemeral, hash_, chaining_key)


def consume_initiation(
    message: Initiation,
    *,
    local_static: X25519PrivateKey,
    local_initial_hash: bytes,
    static_static_for: Callable[[bytes], bytes | None],
) -> ConsumedInitiation:
    """Authenticate an initiation. `static_static_for` maps a known initiator's public key to
    the precomputed DH(local static, initiator static), or None for a stranger."""
    hash_ = blake2s_hash(local_initial_hash, message.ephemeral)
    chaining_key = kdf1(INITIAL_CHAINING_KEY, message.ephemeral)
    chaining_key, key = kdf2(chaining_key, _exchange(local_static, message.ephemeral))
    initiator_public = _open(key, message.encrypted_static, hash_)
    hash_ = blake2s_hash(hash_, message.encrypted_static)
    static_static = static_static_for(initiator_public)
    if static_static is None:
        raise HandshakeError("unknown peer")
    chaining_key, key = kdf2(chaining_key, static_static)
    timestamp = _open(key, message.encrypted_timestamp, hash_)
    hash_ = blake2s_hash(hash_, message.encrypted_timestamp)
    return ConsumedInitiation(
        initiator_public, timestamp, message.sender, message.ephemeral, hash_, chaining_key
    )


def create_response(
    initiation: ConsumedInitiation,
    *,
    ephemeral: X25519PrivateKey,
    preshared_key: bytes | None,
    local_index: int,
) -> tuple[Response, TransportKeys]:
    """Build the response (macs left zero) and the responder's transport keys."""
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    hash_ = blake2s_hash(initiation.hash, ephemeral_public)
    chaining_key = kdf1(initiation.chaining_key, ephemeral_public)
    chaining_key = kdf1(chaining_key, _exchange(ephemeral, initiation.ephemeral_public))
    chaining_key = kdf1(chaining_key, _exchange(ephemeral, initiation.initiator_public))
    chaining_key, tau, key = kdf3(chaining_key, preshared_key or NO_PRESHARED_KEY)
    hash_ = blake2s_hash(hash_, tau)
    encrypted_nothing = aead_seal(key, 0, b"", hash_)
    initiator_send, responder_send = kdf2(chaining_key, b"")
    response = Response(local_index, initiation.sender, ephemeral_public, encrypted_nothing)
    return response, TransportKeys(send=responder_send, receive=initiator_send)


def consume_response(
    message: Response,
    state: InitiatorState,
    *,
    local_static: X25519PrivateKey,
    preshared_key: bytes | None,
) -> TransportKeys:
    """Authenticate a response to `state`'s initiation; returns the initiator's keys."""
    hash_ = blake2s_hash(state.hash, message.ephemeral)
    chaining_key = kdf1(state.chaining_key, message.ephemeral)
    chaining_key = kdf1(chaining_key, _exchange(state.ephemeral, message.ephemeral))
    chaining_key = kdf1(chaining_key, _exchange(local_static, message.ephemeral))
    chaining_key, tau, key = kdf3(chaining_key, preshared_key or NO_PRESHARED_KEY)
    hash_ = blake2s_hash(hash_, tau)
    _open(key, message.encrypted_nothing, hash_)
    initiator_send, responder_send = kdf2(chaining_key, b"")
    return TransportKeys(send=initiator_send, receive=responder_send)
