"""WireGuard datagrams as every transport hands them to the core (`Device.receive`).

Random bytes rarely carry a valid mac1, so the harness shapes most inputs into a message
type first and fixes its mac1 (and, for responses, the receiver index of a pending
handshake): the parser then reaches decryption and the handshake state machine. Transport
data is fuzzed as plaintext encrypted through a live session, which reaches the inner IP
header checks.

Contract: `receive` never raises; it returns only core events, at most a few per datagram
(and per handshake of the one work batch it handles from the queue);
it answers an unauthenticated datagram with at most one handshake-sized message; packets it
delivers are no longer than the datagrams carrying them.
"""

from __future__ import annotations

import struct

from aura_common.wireguard import (
    Device,
    Dropped,
    HandshakeCompleted,
    Received,
    SessionExpired,
    Transmit,
    generate_private_key,
)
from aura_common.wireguard.constants import (
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    RESPONSE_SIZE,
)
from aura_common.wireguard.cookie import mac1_key
from aura_common.wireguard.crypto import keyed_mac
from aura_common.wireguard.limits import HANDSHAKE_WORK_BATCH
from aura_common.wireguard.messages import INITIATION_MAC1_OFFSET, RESPONSE_MAC1_OFFSET

MAX_LEN = 4096
CLIENT_ADDRESS = ("198.51.100.7", 40000)
SERVER_ADDRESS = ("192.0.2.1", 51820)
EVENTS = (Transmit, Received, HandshakeCompleted, SessionExpired, Dropped)
SESSION_INPUTS = 1000  # fresh session well before the 180 s (fake clock) key lifetime


class Pair:
    """A server device and a client device with a live session between them."""

    def __init__(self) -> None:
        self.server = Device(generate_private_key())
        self.client = Device(generate_private_key())
        self.server.add_peer(self.client.public_key)
        self.to_server = self.client.add_peer(self.server.public_key, endpoint=SERVER_ADDRESS)
        self.server_mac1 = mac1_key(self.server.public_key)
        self.now = 1000.0
        self.inputs = 0
        self._handshake()

    def _handshake(self) -> None:
        initiation = first_datagram(self.client.initiate(self.to_server, self.now))
        response = first_datagram(self.server.receive([initiation], CLIENT_ADDRESS, self.now))
        check(self.client.receive([response], SERVER_ADDRESS, self.now), 1)

    def tick(self) -> None:
        self.inputs += 1
        self.now += 0.05
        if self.inputs % SESSION_INPUTS == 0:
            self.__init__()  # type: ignore[misc]


def first_datagram(events: list) -> bytes:
    return next(d for e in events if isinstance(e, Transmit) for d in e.datagrams)


def check(events: list, datagrams: int) -> list:
    assert isinstance(events, list)
    # A few per datagram, plus one work batch of handshakes queued by earlier reads.
    assert len(events) <= 3 * (datagrams + HANDSHAKE_WORK_BATCH) + 4, events
    for event in events:
        assert isinstance(event, EVENTS), event
    return events


def shaped(body: bytes, size: int, message_type: int, key: bytes, mac1_offset: int,
           receiver: int | None = None) -> bytes:
    message = bytearray(body[:size].ljust(size, b"\0"))
    struct.pack_into("<I", message, 0, message_type)
    if receiver is not None:
        struct.pack_into("<I", message, 8, receiver)
    message[mac1_offset : mac1_offset + 16] = keyed_mac(key, bytes(message[:mac1_offset]))
    return bytes(message)


PAIR = Pair()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    pair = PAIR
    pair.tick()
    mode, body = data[0] % 5, data[1:]
    if mode == 0:  # anything at all, from anyone
        events = check(pair.server.receive([body], CLIENT_ADDRESS, pair.now), 1)
    elif mode == 1:  # an initiation with a valid mac1
        message = shaped(body, INITIATION_SIZE, MESSAGE_INITIATION, pair.server_mac1,
                         INITIATION_MAC1_OFFSET)
        events = check(pair.server.receive([message], CLIENT_ADDRESS, pair.now), 1)
    elif mode == 2:  # a response to a fresh client's pending handshake, valid mac1
        client = Device(generate_private_key())
        to_server = client.add_peer(pair.server.public_key, endpoint=SERVER_ADDRESS)
        initiation = first_datagram(client.initiate(to_server, pair.now))
        sender = struct.unpack_from("<I", initiation, 4)[0]
        message = shaped(body, RESPONSE_SIZE, MESSAGE_RESPONSE, mac1_key(client.public_key),
                         RESPONSE_MAC1_OFFSET, receiver=sender)
        events = check(client.receive([message], SERVER_ADDRESS, pair.now), 1)
    elif mode == 3:  # fuzzed plaintext through the live session: the inner IP checks
        sent = check(pair.client.send(pair.to_server, [body], pair.now), 1)
        datagrams = [d for e in sent if isinstance(e, Transmit) for d in e.datagrams]
        events = check(pair.server.receive(datagrams, CLIENT_ADDRESS, pair.now),
                       len(datagrams) or 1)
        delivered = [p for e in events if isinstance(e, Received) for p in e.packets]
        assert sum(map(len, delivered)) <= sum(len(d) - KEEPALIVE_SIZE for d in datagrams)
    else:  # a batch: length-prefixed datagrams, as one GRO read hands them over
        batch, position = [], 0
        while position < len(body):
            size = body[position]
            batch.append(body[position + 1 : position + 1 + size])
            position += 1 + size
        events = check(pair.server.receive(batch, CLIENT_ADDRESS, pair.now), len(batch) or 1)
    if mode != 3:
        for event in events:
            if isinstance(event, Transmit):
                assert all(len(d) <= INITIATION_SIZE for d in event.datagrams), event
