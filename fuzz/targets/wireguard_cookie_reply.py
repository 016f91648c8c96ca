"""Cookie replies a client receives while its handshake is pending (`Device.receive`).

Half the inputs are a random reply addressed to the pending handshake (the receiver index
patched in), half a genuine reply from a loaded server with fuzz bytes XORed over it, so
both the framing checks and the XChaCha20-Poly1305 decryption and cookie use are reached.

Contract: `receive` never raises and answers a cookie reply with nothing but drops; after a
genuine, untouched reply the next initiation carries a mac2 the server accepts.
"""

from __future__ import annotations

import struct

from aura_common.wireguard import Device, Dropped, Transmit, generate_private_key
from aura_common.wireguard.constants import (
    COOKIE_REPLY_SIZE,
    MESSAGE_COOKIE_REPLY,
    RESPONSE_SIZE,
)
from aura_common.wireguard.limits import COOKIE_REPLY_INTERVAL

MAX_LEN = 256
CLIENT_ADDRESS = ("198.51.100.7", 40000)
SERVER_ADDRESS = ("192.0.2.1", 51820)

CLIENT_KEY = generate_private_key()
# A cookie secret lives 120 s: a cookie issued just before the server rotates it is refused
# once, by design. A fresh server every SERVER_INPUTS inputs keeps the check below exact.
SERVER_INPUTS = 20
CLOCK = [1000.0]


def new_server() -> Device:
    server = Device(generate_private_key(), under_load_after=0)  # always answers with a cookie
    server.add_peer(Device(CLIENT_KEY).public_key)
    return server


SERVER = [new_server()]


def datagrams(events: list) -> list[bytes]:
    return [d for e in events if isinstance(e, Transmit) for d in e.datagrams]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    # Past the initiation rate limit and the server's cookie-reply interval for the client's
    # endpoint, so every input starts a handshake the server answers with a cookie.
    CLOCK[0] += COOKIE_REPLY_INTERVAL + 1.0
    now = CLOCK[0]
    if now % (SERVER_INPUTS * (COOKIE_REPLY_INTERVAL + 1.0)) == 0:
        SERVER[0] = new_server()
    server = SERVER[0]
    client = Device(CLIENT_KEY)  # holds no cookie yet
    to_server = client.add_peer(server.public_key, endpoint=SERVER_ADDRESS)
    [initiation] = datagrams(client.initiate(to_server, now))
    sender = struct.unpack_from("<I", initiation, 4)[0]
    if data[0] & 1:
        reply = bytearray(data[1:][:COOKIE_REPLY_SIZE].ljust(COOKIE_REPLY_SIZE, b"\0"))
        struct.pack_into("<II", reply, 0, MESSAGE_COOKIE_REPLY, sender)
    else:
        [genuine] = datagrams(server.receive([initiation], CLIENT_ADDRESS, now))
        assert len(genuine) == COOKIE_REPLY_SIZE
        noise = data[1:]
        reply = bytearray(genuine)
        for i, byte in enumerate(noise[:COOKIE_REPLY_SIZE]):
            reply[i] ^= byte
        reply.extend(noise[COOKIE_REPLY_SIZE:])
    events = client.receive([bytes(reply)], SERVER_ADDRESS, now)
    assert all(isinstance(e, Dropped) for e in events), events
    if reply == genuine_of(data, reply):
        # The cookie was taken: the next initiation (mac2) passes the loaded server.
        now += 1.0
        [again] = datagrams(client.initiate(to_server, now))
        [answer] = datagrams(server.receive([again], CLIENT_ADDRESS, now))
        assert len(answer) == RESPONSE_SIZE, answer


def genuine_of(data: bytes, reply: bytearray) -> bytearray | None:
    """`reply` when the input left a genuine reply untouched, else None."""
    untouched = not data[0] & 1 and not any(data[1:]) and len(data) - 1 <= COOKIE_REPLY_SIZE
    return reply if untouched else None
