"""Retry tokens (RFC 9000 section 8.1): proof that a client receives at the address it claims.

A token is the client's original destination connection id and the time it was issued,
sealed with AES-GCM under a key that lives only in this process, with the client's address and
the Retry's source connection id as associated data: it opens only for the address it was
issued to, in an Initial sent to that connection id, and only for TOKEN_LIFETIME. Checking a
forged one costs one AES-GCM open, so a flood of Initials with tokens costs little more than
one without.
"""

from __future__ import annotations

import ipaddress
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aura_common.addresses import Endpoint

NONCE_LENGTH = 12
# Clients answer a Retry at once (RFC 9000 section 8.1.4 lets servers keep this short).
TOKEN_LIFETIME = 10.0
MAX_CID_LENGTH = 20


def _associated_data(address: Endpoint, retry_source_connection_id: bytes) -> bytes:
    return (ipaddress.ip_address(address[0]).packed + address[1].to_bytes(2, "big")
            + retry_source_connection_id)


class RetryTokens:
    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=128))

    def create_token(self, *, address: Endpoint, original_destination_connection_id: bytes,
                     retry_source_connection_id: bytes, now: float) -> bytes:
        nonce = os.urandom(NONCE_LENGTH)
        plaintext = struct.pack("!d", now) + original_destination_connection_id
        return nonce + self._aead.encrypt(
            nonce, plaintext, _associated_data(address, retry_source_connection_id))

    def validate_token(self, *, address: Endpoint, destination_cid: bytes, token: bytes,
                       now: float) -> bytes:
        """The original destination connection id; ValueError for a forged or stale token."""
        if len(token) < NONCE_LENGTH or len(destination_cid) > MAX_CID_LENGTH:
            raise ValueError("malformed token")
        try:
            plaintext = self._aead.decrypt(token[:NONCE_LENGTH], token[NONCE_LENGTH:],
                                           _associated_data(address, destination_cid))
        except InvalidTag:
            raise ValueError("forged token, or one issued to another address") from None
        (issued,) = struct.unpack_from("!d", plaintext)
        if not 0 <= now - issued <= TOKEN_LIFETIME:
            raise ValueError("expired token")
        return plaintext[8:]
