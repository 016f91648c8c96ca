"""Resource limits of this implementation, kept apart from the protocol's own constants.

Where wireguard-go and the Linux module agree on a value (the handshake queue and its
"under load" mark, 20 handshakes per second with a burst of 5, the one-second memory of the
rate limiter and of being under load), we use theirs.
"""

from __future__ import annotations

from .constants import COOKIE_SECRET_MAX_AGE

DEFAULT_MTU = 1420
# Counters accepted behind the highest one seen (the kernel's window: 8192 bits less one block).
REPLAY_WINDOW = 8128
# A stored cookie is trusted a little less long than the responder keeps its secret.
COOKIE_REFRESH_TIME = COOKIE_SECRET_MAX_AGE - 5.0
# Initiations from one peer closer together than this are refused (a replayed or flooding one).
INITIATION_MIN_INTERVAL = 1.0 / 50

# Handshake messages (initiation, response, cookie reply) that passed the cheap checks and
# wait for their key exchange; more are dropped.
HANDSHAKE_QUEUE_SIZE = 1024
# Key exchanges done per receive call (and per `process_handshakes`): what one read can cost
# in handshake work, so reading, and with it data, goes on at any handshake rate. At about
# 0.1-0.3 ms each, a few keep the time between reads well under CoDel's 5 ms target, so data
# never waits in the socket long enough to be dropped because handshakes were worked.
HANDSHAKE_WORK_BATCH = 4
# Handshake messages from a source (IPv4 address, IPv6 /64) with none queued for this long
# go ahead of the others (backlog.py): a real initiator retries REKEY_TIMEOUT (5 s) apart.
# Sources remembered for it, the one queued longest ago forgotten first.
FRESH_AFTER = 5.0
BACKLOG_SOURCES = 16384
# Initiations a device without the static key hands its authority at once; the rest wait
# in its own backlog, where new sources go first, rather than in the authority's FIFO.
AUTHORITY_WINDOW = 64
# "Under load" while this many handshake messages wait, and for UNDER_LOAD_STICKY seconds after.
UNDER_LOAD_BACKLOG = HANDSHAKE_QUEUE_SIZE // 8
UNDER_LOAD_STICKY = 1.0

# Cookie replies under load: at most one per source endpoint in this many seconds (less than
# REKEY_TIMEOUT, so every retry of a real initiator is answered), for this many endpoints.
COOKIE_REPLY_INTERVAL = 4.0
COOKIE_REPLY_TABLE_SIZE = 8192

# Per-source rate limit for handshakes under load, applied only after a valid mac2.
HANDSHAKES_PER_SECOND = 20.0
HANDSHAKE_BURST = 5
# Sources the rate limiter remembers. An entry idle this long has a full bucket again and is
# forgotten; when the table is full the least recently seen source goes.
RATE_LIMIT_TABLE_SIZE = 4096
RATE_LIMIT_IDLE = 1.0

# A source (as above) whose initiation, carrying a valid mac2, did not authenticate (no key
# the authority knows made it) gets no handshake screened under load for this long: within
# its rate limit it could otherwise have a key exchange refused every FRESH_AFTER seconds,
# and thousands of such sources would take the authority's whole share. A real client with a
# key we do not know fails the same way each time; others behind its address (one IPv4 NAT)
# wait under load as they would behind a flood of its 20 a second. Sources remembered for
# it, the one refused longest ago forgotten first.
REFUSED_SOURCE_PENALTY = 30.0
REFUSED_SOURCES = 16384

# Packets waiting for a handshake, per peer.
MAX_QUEUED_PACKETS = 1024
