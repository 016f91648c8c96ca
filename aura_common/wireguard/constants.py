"""The protocol's own constants (the whitepaper's): names, labels, message sizes, timers.

What this implementation chooses (table sizes, queue bounds, the replay window, the MTU) is in
`limits.py`.
"""

from __future__ import annotations

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE
KEY_SIZE = 32
TIMESTAMP_SIZE = 12

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER = 0.334
KEEPALIVE_TIMEOUT = 10.0
# The initiator rekeys when data arrives on a session this old, before the responder drops it.
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME

COOKIE_SECRET_MAX_AGE = 120.0
