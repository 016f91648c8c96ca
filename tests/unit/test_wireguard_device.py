"""Two cores talking to each other: handshakes, data, replay, timers, expiry, peer removal."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_common.errors import AuraError
from aura_common.wireguard import (
    Device,
    Dropped,
    Event,
    HandshakeCompleted,
    Peer,
    Received,
    SessionExpired,
    Transmit,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER,
    ZERO_KEYS_AFTER,
)
from aura_common.wireguard.keypair import Keypair
from aura_common.wireguard.limits import REPLAY_WINDOW
from aura_common.wireguard.noise import TransportKeys
from tests.unit.wireguard_pair import (
    CLIENT_ADDR,
    SERVER_ADDR,
    Pair,
    drop_reasons,
    ipv4_packet,
    ipv6_packet,
    of_type,
    transmits,
)


@pytest.mark.parametrize("psk", [None, bytes(range(32))], ids=["no-psk", "psk"])
def test_handshake_and_data_both_ways(psk: bytes | None) -> None:
    pair = Pair(psk)
    initiation = pair.client.initiate(pair.to_server, 0.0)
    assert [len(d) for d in transmits(initiation)] == [148]
    response = pair.at_server(initiation, 0.01)
    assert [len(d) for d in transmits(response)] == [92]
    assert not of_type(response, HandshakeCompleted)  # only after the first data packet
    confirmation = pair.at_client(response, 0.02)
    assert of_type(confirmation, HandshakeCompleted)[0].peer is pair.to_server
    assert [len(d) for d in transmits(confirmation)] == [32]  # keepalive
    done = pair.at_server(confirmation, 0.03)
    assert of_type(done, HandshakeCompleted)[0].peer is pair.to_client
    assert not of_type(done, Received)  # keepalives are not delivered
    assert pair.to_client.last_handshake == 0.03 and pair.to_server.last_handshake == 0.02

    up = pair.at_server(pair.client.send(pair.to_server, [ipv4_packet(b"up")], 1.0), 1.0)
    assert of_type(up, Received)[0].packets == [ipv4_packet(b"up")]
    down = pair.at_client(pair.server.send(pair.to_client, [ipv6_packet(b"down")], 1.1), 1.1)
    assert of_type(down, Received)[0].packets == [ipv6_packet(b"down")]
    assert pair.to_server.tx_bytes > 0 and pair.to_client.rx_bytes > 0


def test_mismatched_preshared_key_fails_the_handshake() -> None:
    pair = Pair(bytes(32).replace(b"\0", b"\1"), client_psk=bytes(range(32)))
    response = pair.at_server(pair.client.initiate(pair.to_server, 0.0), 0.0)
    result = pair.at_client(response, 0.0)
    assert not of_type(result, HandshakeCompleted)
    assert drop_reasons(result) == ["handshake rejected: authentication failed"]


def test_padding_to_sixteen_capped_at_mtu_and_removed_on_receipt() -> None:
    pair = Pair()
    pair.connect()
    for size, expected in ((21, 32), (32, 32), (1419, 1420), (1420, 1420)):
        packet = ipv4_packet(bytes(size - 20))
        (datagram,) = transmits(pair.client.send(pair.to_server, [packet], 1.0))
        assert len(datagram) == 16 + expected + 16
        assert of_type(pair.server.receive([datagram], CLIENT_ADDR, 1.0), Received)[0].packets == [
            packet
        ]


def test_control_messages_pass_through_padded_and_runs_merge() -> None:
    pair = Pair()
    pair.connect()
    control = b"\x01aura-control"
    sent = pair.client.send(pair.to_server, [ipv4_packet(b"a"), control, ipv4_packet(b"b")], 1.0)
    received = of_type(pair.at_server(sent, 1.0), Received)
    assert len(received) == 1  # one event for the whole run
    assert received[0].packets == [ipv4_packet(b"a"), control + bytes(3), ipv4_packet(b"b")]


def test_ip_length_beyond_the_payload_is_dropped() -> None:
    pair = Pair()
    pair.connect()
    sent = pair.client.send(pair.to_server, [ipv4_packet(b"x", total=200)], 1.0)
    assert drop_reasons(pair.at_server(sent, 1.0)) == ["malformed IPv4 packet"]


def test_endpoint_roams_to_the_latest_authenticated_source() -> None:
    pair = Pair()
    pair.connect()
    roamed = ("203.0.113.7", 12345)
    pair.at_server(pair.client.send(pair.to_server, [ipv4_packet()], 1.0), 1.0, source=roamed)
    assert pair.to_client.endpoint == roamed
    reply = pair.server.send(pair.to_client, [ipv4_packet()], 1.1)
    assert of_type(reply, Transmit)[0].destination == roamed
    # Unauthenticated junk from elsewhere does not move it.
    pair.server.receive([b"\x04\0\0\0" + bytes(40)], ("203.0.113.99", 1), 1.2)
    assert pair.to_client.endpoint == roamed


def test_replayed_data_is_dropped() -> None:
    pair = Pair()
    pair.connect()
    datagrams = transmits(pair.client.send(pair.to_server, [ipv4_packet()], 1.0))
    assert of_type(pair.server.receive(datagrams, CLIENT_ADDR, 1.0), Received)
    assert drop_reasons(pair.server.receive(datagrams, CLIENT_ADDR, 1.1)) == ["replayed data"]


def test_replay_window_edges_and_out_of_order() -> None:
    pair = Pair()
    pair.connect()  # the confirming keepalive used client counter 0
    datagrams = transmits(pair.client.send(pair.to_server, [ipv4_packet()] * 8200, 1.0))
    assert REPLAY_WINDOW == 8128
    counter_of = {struct.unpack_from("<Q", d, 8)[0]: d for d in datagrams}
    highest = 8200

    def deliver(counter: int) -> list[Event]:
        return pair.server.receive([counter_of[counter]], CLIENT_ADDR, 1.0)

    assert of_type(deliver(highest), Received)
    # The window is REPLAY_WINDOW counters behind the highest, as in wireguard-go.
    assert drop_reasons(deliver(highest - 8129)) == ["replayed data"]  # just beyond the window
    assert of_type(deliver(highest - 8128), Received)  # exactly at the window's edge
    assert of_type(deliver(highest - 5), Received)  # out of order inside the window
    assert of_type(deliver(highest - 7), Received)
    assert drop_reasons(deliver(highest - 5)) == ["replayed data"]
    assert of_type(deliver(highest - 1), Received)


def test_tampered_data_does_not_authenticate() -> None:
    pair = Pair()
    pair.connect()
    (datagram,) = transmits(pair.client.send(pair.to_server, [ipv4_packet()], 1.0))
    tampered = datagram[:-1] + bytes([datagram[-1] ^ 1])
    assert drop_reasons(pair.server.receive([tampered], CLIENT_ADDR, 1.0)) == [
        "data did not authenticate"
    ]


def test_responder_holds_data_until_the_initiator_confirms_the_keys() -> None:
    pair = Pair()
    response = pair.at_server(pair.client.initiate(pair.to_server, 0.0), 0.0)
    early = pair.server.send(pair.to_client, [ipv4_packet(b"early")], 0.01)
    assert not transmits(early)  # queued: the next keypair is not confirmed yet
    confirmation = pair.at_client(response, 0.02)
    flushed = pair.at_server(confirmation, 0.03)
    assert of_type(flushed, HandshakeCompleted)
    received = pair.at_client(flushed, 0.04)
    assert of_type(received, Received)[0].packets == [ipv4_packet(b"early")]


def test_send_without_session_queues_and_initiates() -> None:
    pair = Pair()
    first = pair.client.send(pair.to_server, [ipv4_packet(b"1")], 0.0)
    assert [len(d) for d in transmits(first)] == [148]
    assert not transmits(pair.client.send(pair.to_server, [ipv4_packet(b"2")], 0.1))
    confirmation = pair.at_client(pair.at_server(first, 0.2), 0.3)
    received = of_type(pair.at_server(confirmation, 0.4), Received)
    assert received[0].packets == [ipv4_packet(b"1"), ipv4_packet(b"2")]


def test_initiator_rekeys_on_send_after_rekey_after_time_responder_does_not() -> None:
    pair = Pair()
    pair.connect(0.0)
    assert [len(d) for d in transmits(pair.client.send(pair.to_server, [ipv4_packet()],
                                                         REKEY_AFTER_TIME - 1))] == [64]
    later = transmits(pair.client.send(pair.to_server, [ipv4_packet()], REKEY_AFTER_TIME))
    assert sorted(len(d) for d in later) == [64, 148]
    server_later = transmits(pair.server.send(pair.to_client, [ipv4_packet()], REKEY_AFTER_TIME))
    assert [len(d) for d in server_later] == [64]


def test_initiator_rekeys_on_receive_near_reject_after_time() -> None:
    pair = Pair()
    pair.connect(0.0)
    now = REKEY_ON_RECEIVE_AGE - 0.5
    assert not [d for d in transmits(pair.at_client(
        pair.server.send(pair.to_client, [ipv4_packet()], now), now)) if len(d) == 148]
    now = REKEY_ON_RECEIVE_AGE + 0.5
    events = pair.at_client(pair.server.send(pair.to_client, [ipv4_packet()], now), now)
    assert [len(d) for d in transmits(events)] == [148]
    assert of_type(events, Received)


def test_rekey_after_messages_and_reject_after_messages() -> None:
    pair = Pair()
    pair.connect(0.0)
    keypair = pair.to_server.current
    assert keypair is not None
    keypair.send_counter = REKEY_AFTER_MESSAGES
    assert sorted(len(d) for d in transmits(
        pair.client.send(pair.to_server, [ipv4_packet()], 1.0))) == [64, 148]
    keypair.send_counter = REJECT_AFTER_MESSAGES - 1
    assert not [d for d in transmits(pair.client.send(pair.to_server, [ipv4_packet()], 2.0))
                if len(d) == 64]


def test_rotation_keeps_the_previous_keypair_for_data_in_flight() -> None:
    pair = Pair()
    pair.connect(0.0)
    in_flight = pair.client.send(pair.to_server, [ipv4_packet(b"old")], 10.0)
    pair.connect(10.1)  # a second handshake rotates the keys on both sides
    assert of_type(pair.at_server(in_flight, 10.2), Received)[0].packets == [ipv4_packet(b"old")]
    fresh = pair.at_server(pair.client.send(pair.to_server, [ipv4_packet(b"new")], 10.3), 10.3)
    assert of_type(fresh, Received)[0].packets == [ipv4_packet(b"new")]


def test_the_previous_keypair_keeps_only_its_receive_cipher() -> None:
    """Nothing is sent on the previous keys, so their send cipher (2 KiB of OpenSSL state per
    peer) is dropped at rotation, on the initiator's side and the responder's."""
    pair = Pair()
    pair.connect(0.0)
    pair.connect(10.0)
    for peer in (pair.to_server, pair.to_client):
        previous = peer._previous  # the slot has no public view
        assert previous is not None and previous.receiver is not None
        assert previous.sender is None


def test_timer_jitter_is_drawn_in_bulk_not_per_packet() -> None:
    """Request and reply, 1,000 times: each reply arms the server's "no answer" timer with
    fresh jitter, which comes from a few large draws from the random source."""
    draws: list[int] = []

    def rng(size: int) -> bytes:
        draws.append(size)
        return os.urandom(size)

    pair = Pair(server_rng=rng)
    pair.connect(0.0)
    before = len(draws)
    deadlines = set()
    for step in range(1000):
        now = 1.0 + step / 1000
        pair.at_client(pair.server.send(pair.to_client, [ipv4_packet(b"reply")], now), now)
        due = pair.to_client.timers.rehandshake_due
        assert due is not None
        deadlines.add(round(due - now, 6))
        pair.at_server(pair.client.send(pair.to_server, [ipv4_packet(b"request")], now), now)
    assert len(draws) - before <= 5
    base = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert all(base <= d <= base + REKEY_TIMEOUT_JITTER + 1e-6 for d in deadlines)
    assert len(deadlines) > 100  # still jittered, one value per arming


def test_retransmit_with_jitter_then_give_up_and_drop_the_queue() -> None:
    pair = Pair()
    first = transmits(pair.client.send(pair.to_server, [ipv4_packet(b"lost")], 0.0))
    assert not pair.client.tick(REKEY_TIMEOUT - 0.01)
    retries = []
    now = REKEY_TIMEOUT + 0.334
    while now < REKEY_ATTEMPT_TIME + 10:
        events = pair.client.tick(now)
        retries += [d for d in transmits(events) if len(d) == 148]
        if "handshake did not complete; queued packets dropped" in drop_reasons(events):
            break
        now += 0.25
    else:
        pytest.fail("the handshake was never given up")
    assert REKEY_ATTEMPT_TIME <= now <= REKEY_ATTEMPT_TIME + REKEY_TIMEOUT + 0.5
    assert 15 <= len(retries) <= 18
    assert len({d[4:8] for d in retries + first}) == len(retries) + 1  # fresh index each time
    # A late answer to the abandoned attempt is ignored; a new handshake carries only new data.
    late = pair.at_client(pair.at_server([Transmit(SERVER_ADDR, [retries[-1]])], now), now)
    assert drop_reasons(late) == ["response to no pending initiation"]
    now += 1
    retry = pair.client.send(pair.to_server, [ipv4_packet(b"new")], now)
    received = pair.at_server(pair.at_client(pair.at_server(retry, now), now), now)
    assert of_type(received, Received)[0].packets == [ipv4_packet(b"new")]


def test_passive_keepalive_after_receiving_data_without_replying() -> None:
    pair = Pair()
    pair.connect(0.0)
    pair.at_server(pair.client.send(pair.to_server, [ipv4_packet()], 1.0), 1.0)
    assert not transmits(pair.server.tick(1.0 + KEEPALIVE_TIMEOUT - 0.1))
    assert [len(d) for d in transmits(pair.server.tick(1.0 + KEEPALIVE_TIMEOUT))] == [32]
    assert not transmits(pair.server.tick(1.0 + 2 * KEEPALIVE_TIMEOUT))  # only once
    # Replying in time makes the keepalive unnecessary.
    pair.at_server(pair.client.send(pair.to_server, [ipv4_packet()], 30.0), 30.0)
    pair.server.send(pair.to_client, [ipv4_packet()], 31.0)
    assert not transmits(pair.server.tick(30.0 + KEEPALIVE_TIMEOUT))


def test_data_sent_without_answer_triggers_a_new_handshake() -> None:
    pair = Pair()
    pair.connect(0.0)
    pair.client.send(pair.to_server, [ipv4_packet()], 1.0)
    assert not transmits(pair.client.tick(1.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT - 0.1))
    events = pair.client.tick(1.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + 0.334)
    assert [len(d) for d in transmits(events)] == [148]


def test_persistent_keepalive() -> None:
    pair = Pair(keepalive=25)
    pair.connect(0.0)
    assert not transmits(pair.client.tick(24.0))
    assert [len(d) for d in transmits(pair.client.tick(25.0))] == [32]
    assert not transmits(pair.client.tick(26.0))
    assert [len(d) for d in transmits(pair.client.tick(50.0))] == [32]


def test_sessions_expire_and_keys_are_erased() -> None:
    pair = Pair()
    pair.connect(0.0)
    stale = transmits(pair.client.send(pair.to_server, [ipv4_packet()], 1.0))
    assert not of_type(pair.server.tick(REJECT_AFTER_TIME - 1), SessionExpired)
    expired = pair.server.tick(REJECT_AFTER_TIME)
    assert [e.peer for e in of_type(expired, SessionExpired)] == [pair.to_client]
    assert not of_type(pair.server.tick(REJECT_AFTER_TIME + 1), SessionExpired)
    assert pair.server.receive(stale, CLIENT_ADDR, REJECT_AFTER_TIME) == [
        Dropped("session expired", CLIENT_ADDR)
    ]
    pair.server.tick(ZERO_KEYS_AFTER)
    assert pair.to_client.current is None  # the stale keys' index is forgotten too:
    assert drop_reasons(pair.server.receive(stale, CLIENT_ADDR, ZERO_KEYS_AFTER)) == [
        "unknown receiver index"
    ]
    # The client's session is gone too; its unanswered data had already asked for a handshake.
    client_events = pair.client.tick(REJECT_AFTER_TIME)
    assert of_type(client_events, SessionExpired)
    assert [len(d) for d in transmits(client_events)] == [148]
    assert not transmits(pair.client.send(pair.to_server, [ipv4_packet()], REJECT_AFTER_TIME + 1))


def test_replayed_and_flooded_initiations_are_dropped() -> None:
    pair = Pair()
    initiation = pair.client.initiate(pair.to_server, 0.0)
    pair.at_client(pair.at_server(initiation, 0.0), 0.0)
    assert drop_reasons(pair.at_server(initiation, 5.0)) == [
        "handshake rejected: replayed initiation"]
    fresh = pair.client.initiate(pair.to_server, 5.0)
    assert transmits(pair.at_server(fresh, 5.0))
    too_soon = pair.client.initiate(pair.to_server, 5.01)
    assert drop_reasons(pair.at_server(too_soon, 5.01)) == [
        "handshake rejected: initiation flood"]


def test_unknown_peer_is_rejected() -> None:
    pair = Pair()
    stranger = Device(generate_private_key())
    to_server = stranger.add_peer(public_key(pair.server_key), endpoint=SERVER_ADDR)
    events = pair.at_server(stranger.initiate(to_server, 0.0), 0.0)
    assert drop_reasons(events) == ["handshake rejected: unknown peer"]


def test_removed_peer_sessions_die_at_once() -> None:
    pair = Pair()
    pair.connect(0.0)
    pair.server.remove_peer(public_key(pair.client_key))
    assert pair.server.peer(public_key(pair.client_key)) is None
    assert list(pair.server.peers) == []
    data = pair.client.send(pair.to_server, [ipv4_packet()], 1.0)
    assert drop_reasons(pair.at_server(data, 1.0)) == ["unknown receiver index"]
    assert drop_reasons(pair.server.send(pair.to_client, [ipv4_packet()], 1.0)) == [
        "peer was removed"
    ]
    assert drop_reasons(pair.at_server(pair.client.initiate(pair.to_server, 2.0), 2.0)) == [
        "handshake rejected: unknown peer"
    ]


def test_add_peer_rejects_bad_keys() -> None:
    device = Device(generate_private_key())
    with pytest.raises(AuraError):
        device.add_peer(b"short")
    with pytest.raises(AuraError):
        device.add_peer(bytes(32))  # low-order point
    key = public_key(generate_private_key())
    device.add_peer(key)
    with pytest.raises(AuraError):
        device.add_peer(key)


class _ReplayModel:
    """The window's definition, spelled out with a set."""

    def __init__(self) -> None:
        self.highest, self.seen = 0, set[int]()

    def accept(self, counter: int) -> bool:
        if counter >= REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        if self.highest - counter > REPLAY_WINDOW:
            return False
        self.seen.add(counter)
        self.highest = max(self.highest, counter)
        return True


@given(st.lists(st.one_of(st.integers(0, 20_000), st.integers(0, 2**64 - 1)), max_size=200))
def test_replay_window_matches_its_definition(counters: list[int]) -> None:
    keypair = Keypair(TransportKeys(bytes(32), bytes(32)), local_index=1, remote_index=2,
                      is_initiator=True, created=0.0)
    model = _ReplayModel()
    for counter in counters:
        assert keypair.accept_counter(counter) == model.accept(counter), counter


def test_the_replay_window_takes_no_more_memory_as_the_packets_it_saw_grow() -> None:
    """A live session's window is a fixed 1 KiB: filled blocks take no memory of their own."""
    keypair = Keypair(TransportKeys(bytes(32), bytes(32)), local_index=1, remote_index=2,
                      is_initiator=False, created=0.0)
    keypair.accept_counter(0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for counter in range(1, 3 * REPLAY_WINDOW):
            keypair.accept_counter(counter)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 512


def test_initiation_timestamps_come_from_the_injected_wall_clock() -> None:
    """A restarted client numbers its initiations from its wall clock: one set behind the
    timestamp the server last accepted is refused as a replay, one ahead of it is answered."""
    client_key, server_key = generate_private_key(), generate_private_key()
    server = Device(server_key)
    server.add_peer(public_key(client_key))
    wall = 1_800_000_000 * 10**9

    def client_at(wall_ns: int) -> tuple[Device, Peer]:
        client = Device(client_key, wall_ns=lambda: wall_ns)
        return client, client.add_peer(public_key(server_key), endpoint=SERVER_ADDR)

    client, peer = client_at(wall)
    assert transmits(server.receive(transmits(client.initiate(peer, 0.0)), CLIENT_ADDR, 0.0))
    client, peer = client_at(wall - 10**9)
    events = server.receive(transmits(client.initiate(peer, 1.0)), CLIENT_ADDR, 1.0)
    assert drop_reasons(events) == ["handshake rejected: replayed initiation"]
    client, peer = client_at(wall + 10**9)
    assert [len(d) for d in transmits(
        server.receive(transmits(client.initiate(peer, 2.0)), CLIENT_ADDR, 2.0))] == [92]
