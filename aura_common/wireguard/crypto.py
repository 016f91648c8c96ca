"""Cryptographic primitives of WireGuard, built on hashlib and `cryptography`."""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

_blake2s = hashlib.blake2s
_ZERO_NONCE_PREFIX = bytes(4)
_CHACHA_CONSTANTS = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_TAI64_EPOCH = 2**62 + 10


def blake2s_hash(*parts: bytes) -> bytes:
    """BLAKE2s-256 of the concatenated parts."""
    digest = _blake2s()
    for part in parts:
        digest.update(part)
    return digest.digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, _blake2s)


def kdf1(key: bytes, data: bytes) -> bytes:
    prk = hmac_blake2s(key, data)
    return hmac_blake2s(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    return t1, hmac_blake2s(prk, t1 + b"\x02")


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = hmac_blake2s(key, data)
    t1 = hmac_blake2s(prk, b"\x01")
    t2 = hmac_blake2s(prk, t1 + b"\x02")
    return t1, t2, hmac_blake2s(prk, t2 + b"\x03")


def keyed_mac(key: bytes, data: bytes) -> bytes:
    """Keyed BLAKE2s with a 16-byte digest (mac1, mac2, cookies)."""
    return _blake2s(data, digest_size=16, key=key).digest()


def generate_private_key() -> bytes:
    """A new X25519 private key, clamped as `wg genkey` writes it."""
    key = bytearray(os.urandom(32))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """X25519; raises ValueError for a low-order public key (all-zero shared secret)."""
    return private.exchange(X25519PublicKey.from_public_bytes(public))


def nonce(counter: int) -> bytes:
    return _ZERO_NONCE_PREFIX + counter.to_bytes(8, "little")


def aead_seal(key: bytes, counter: int, plaintext: bytes, aad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(nonce(counter), plaintext, aad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, aad: bytes) -> bytes:
    """Raises cryptography's InvalidTag when authentication fails."""
    return ChaCha20Poly1305(key).decrypt(nonce(counter), ciphertext, aad)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20, recovered from one raw ChaCha20 block.

    A ChaCha20 block is rounds(state) + state; removing the known input words 0-3 (constants)
    and 12-15 (the nonce) leaves exactly the words HChaCha20 outputs.
    """
    encryptor = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    block = _WORDS16.unpack(encryptor.update(bytes(64)))
    nonce_words = _WORDS4.unpack(nonce16)
    head = [(block[i] - _CHACHA_CONSTANTS[i]) & 0xFFFFFFFF for i in range(4)]
    tail = [(block[12 + i] - nonce_words[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *head, *tail)


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(_ZERO_NONCE_PREFIX + nonce24[16:], plaintext, aad)


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(_ZERO_NONCE_PREFIX + nonce24[16:], ciphertext, aad)


def tai64n(unix_ns: int) -> bytes:
    """TAI64N label (12 bytes: big-endian TAI seconds, then nanoseconds) of a Unix time."""
    seconds, nanoseconds = divmod(unix_ns, 1_000_000_000)
    return struct.pack(">QI", _TAI64_EPOCH + seconds, nanoseconds)
