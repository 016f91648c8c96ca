"""Garbage in: every malformed message is dropped cheaply, nothing ever raises."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.wireguard import Dropped, Received
from tests.unit.wireguard_pair import CLIENT_ADDR, Pair, ipv4_packet, transmits


def valid_messages() -> dict[str, bytes]:
    pair = Pair()
    initiation = transmits(pair.client.initiate(pair.to_server, 0.0))[0]
    response = transmits(pair.server.receive([initiation], CLIENT_ADDR, 0.0))[0]
    cookie = Pair(under_load_after=0)
    reply = transmits(cookie.server.receive(
        transmits(cookie.client.initiate(cookie.to_server, 0.0)), CLIENT_ADDR, 0.0))[0]
    pair.connect(1.0)
    data = transmits(pair.client.send(pair.to_server, [ipv4_packet()], 2.0))[0]
    return {"initiation": initiation, "response": response, "cookie": reply, "data": data}


MESSAGES = valid_messages()


def mutations(message: bytes) -> list[bytes]:
    return [
        message[:-1],  # truncated
        message + b"\0",  # oversized (for data: breaks authentication)
        message[:4],
        b"\x09" + message[1:],  # wrong type
        message[:1] + b"\x01" + message[2:],  # nonzero reserved bytes
        message[:3] + b"\x01" + message[4:],
        message[:-20] + bytes([message[-20] ^ 0x40]) + message[-19:],  # flipped bit near the macs
        os.urandom(len(message)),
    ]


@pytest.mark.parametrize("kind", sorted(MESSAGES))
def test_malformed_messages_are_dropped(kind: str) -> None:
    pair = Pair()
    pair.connect(0.0)
    for bad in mutations(MESSAGES[kind]):
        for device in (pair.server, pair.client):
            events = device.receive([bad], CLIENT_ADDR, 1.0)
            assert events and all(isinstance(e, Dropped) for e in events), (kind, bad[:8], events)


def test_bad_mac1_is_rejected_before_any_key_agreement() -> None:
    pair = Pair()
    initiation = transmits(pair.client.initiate(pair.to_server, 0.0))[0]
    bad = initiation[:116] + bytes(16) + initiation[132:]
    assert [e.reason for e in pair.server.receive([bad], CLIENT_ADDR, 0.0)
            if isinstance(e, Dropped)] == ["bad mac1"]


def test_empty_and_tiny_datagrams() -> None:
    pair = Pair()
    for junk in (b"", b"\x01", b"\x04\0\0", b"\x04\0\0\0" + bytes(27)):
        events = pair.server.receive([junk], CLIENT_ADDR, 0.0)
        assert len(events) == 1 and isinstance(events[0], Dropped)


FUZZ_PAIR = Pair()
FUZZ_PAIR.connect(0.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=200),
    st.sampled_from(list(MESSAGES.values())).flatmap(
        lambda m: st.tuples(st.just(m), st.integers(0, len(m) - 1), st.integers(1, 255))
        .map(lambda t: t[0][:t[1]] + bytes([t[0][t[1]] ^ t[2]]) + t[0][t[1] + 1:])
    ),
), max_size=6))
def test_receive_never_raises(datagrams: list[bytes]) -> None:
    for device in (FUZZ_PAIR.server, FUZZ_PAIR.client):
        events = device.receive(datagrams, CLIENT_ADDR, 1.0)
        assert not any(isinstance(e, Received) for e in events)
