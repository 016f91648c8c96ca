"""Preshared keys sealed with the cluster key, so the database alone does not reveal them.

Every member holds the same 32-byte cluster key (`key_dir/cluster.key`, moved by `aura
cluster export`); a PSK is stored as nonce + ChaCha20-Poly1305(psk), bound to the peer's name
and public key, so a sealed key copied onto another row does not open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from aura_common.errors import AuraError

NONCE_SIZE = 12
SEALED_SIZE = NONCE_SIZE + 32 + 16


def _context(name: str, public_key: bytes) -> bytes:
    return b"aura psk\x00" + name.encode() + b"\x00" + public_key


def seal(key: bytes, name: str, public_key: bytes, psk: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, psk, _context(name, public_key))


def unseal(key: bytes, name: str, public_key: bytes, sealed: bytes) -> bytes:
    """The PSK; AuraError when it was sealed with another key or for another peer."""
    if len(sealed) != SEALED_SIZE:
        raise AuraError(f"peer {name}: the sealed preshared key has {len(sealed)} bytes, "
                        f"expected {SEALED_SIZE}")
    try:
        return ChaCha20Poly1305(key).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _context(name, public_key)
        )
    except InvalidTag:
        raise AuraError(f"peer {name}: its preshared key does not open with this server's "
                        "cluster key (was cluster.key copied from the first member with "
                        "`aura cluster export`?)") from None


def new_cluster_key() -> bytes:
    return ChaCha20Poly1305.generate_key()
