"""Published constants and known-answer vectors for the WireGuard primitives."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.exceptions import InvalidTag

from aura_common.wireguard import constants, crypto, generate_private_key, limits, public_key
from aura_common.wireguard.noise import INITIAL_CHAINING_KEY, INITIAL_HASH


def test_protocol_names_and_initial_values() -> None:
    assert constants.CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert constants.IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert constants.LABEL_MAC1 == b"mac1----"
    assert constants.LABEL_COOKIE == b"cookie--"
    assert INITIAL_CHAINING_KEY.hex().startswith("60e26dae")
    assert INITIAL_HASH.hex().startswith("2211b361")


def test_message_sizes_and_limits() -> None:
    assert (constants.INITIATION_SIZE, constants.RESPONSE_SIZE) == (148, 92)
    assert (constants.COOKIE_REPLY_SIZE, constants.KEEPALIVE_SIZE) == (64, 32)
    assert constants.REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1
    assert constants.REKEY_AFTER_MESSAGES == 2**60
    assert limits.REPLAY_WINDOW == 8128


def test_blake2s_known_answers() -> None:
    assert crypto.blake2s_hash(b"").hex() == (
        "69217a3079908094e11121d042354a7c1f55b6482ca1a51e1b250dfd1ed0eef9"
    )
    assert crypto.blake2s_hash(b"a", b"bc").hex() == (
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    )
    # RFC 7693 / BLAKE2 reference keyed vector: key 00..1f, empty message.
    keyed = hashlib.blake2s(b"", key=bytes(range(32))).hexdigest()
    assert keyed == "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    assert len(crypto.keyed_mac(bytes(range(32)), b"")) == 16


def test_kdf_chains_hmac_outputs() -> None:
    key, data = bytes(32), b"input"
    prk = crypto.hmac_blake2s(key, data)
    t1 = crypto.hmac_blake2s(prk, b"\x01")
    t2 = crypto.hmac_blake2s(prk, t1 + b"\x02")
    t3 = crypto.hmac_blake2s(prk, t2 + b"\x03")
    assert crypto.kdf1(key, data) == t1
    assert crypto.kdf2(key, data) == (t1, t2)
    assert crypto.kdf3(key, data) == (t1, t2, t3)


def test_hchacha20_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert crypto.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    )


XCHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
XCHACHA_CIPHERTEXT = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f"
    "4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f"
    "76b2383565d3fff921f9664c97637da9768812f615c68b13b52e"
)
XCHACHA_TAG = bytes.fromhex("c0875924c1c7987947deafd8780acf49")


def test_xchacha20poly1305_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03 appendix A.3.1
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    sealed = crypto.xaead_seal(key, nonce, XCHACHA_PLAINTEXT, aad)
    assert sealed == XCHACHA_CIPHERTEXT + XCHACHA_TAG
    assert crypto.xaead_open(key, nonce, sealed, aad) == XCHACHA_PLAINTEXT
    with pytest.raises(InvalidTag):
        crypto.xaead_open(key, nonce, sealed, aad + b"x")


def test_aead_nonce_is_zero_prefix_and_little_endian_counter() -> None:
    assert crypto.nonce(0x0102) == bytes(4) + bytes([2, 1]) + bytes(6)
    key = bytes(range(32))
    sealed = crypto.aead_seal(key, 7, b"payload", b"aad")
    assert crypto.aead_open(key, 7, sealed, b"aad") == b"payload"
    with pytest.raises(InvalidTag):
        crypto.aead_open(key, 8, sealed, b"aad")


def test_tai64n_layout_and_order() -> None:
    label = crypto.tai64n(1_700_000_000_123_456_789)
    assert len(label) == 12
    assert int.from_bytes(label[:8], "big") == 2**62 + 10 + 1_700_000_000
    assert int.from_bytes(label[8:], "big") == 123_456_789
    assert crypto.tai64n(1_700_000_000_123_456_790) > label


def test_keys_are_clamped_and_public_key_matches_x25519() -> None:
    private = generate_private_key()
    assert len(private) == 32
    assert private[0] & 7 == 0 and private[31] & 0x80 == 0 and private[31] & 0x40
    # RFC 7748 section 6.1 (Alice)
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    assert public_key(alice).hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
