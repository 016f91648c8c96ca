"""A device without the static key, answered by a handshake authority that holds it."""

from __future__ import annotations

import pytest

from aura_common.errors import AuraError
from aura_common.wireguard import (
    Device,
    Event,
    HandshakeAuthority,
    HandshakeCompleted,
    HandshakeRequested,
    Received,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.authority import TICKET_LIFETIME
from aura_common.wireguard.constants import REKEY_TIMEOUT
from aura_common.wireguard.noise import HandshakeError
from tests.unit.wireguard_pair import (
    CLIENT_ADDR,
    SERVER_ADDR,
    WALL,
    Relayed,
    drop_reasons,
    ipv4_packet,
    of_type,
    transmits,
)


@pytest.mark.parametrize("psk", [None, bytes(range(32))], ids=["no-psk", "psk"])
def test_relayed_handshake_gives_a_working_session(psk: bytes | None) -> None:
    pair = Relayed(psk)
    [request] = pair.requests(0.0)
    assert request.source == CLIENT_ADDR and len(request.initiation) == 148
    response = pair.relay.complete_handshake(request.local_index, pair.answer(request, 0.0), 0.0)
    assert [len(d) for d in transmits(response)] == [92]
    confirmation = pair.client.receive(transmits(response), SERVER_ADDR, 0.01)
    assert of_type(confirmation, HandshakeCompleted)
    done = pair.relay.receive(transmits(confirmation), CLIENT_ADDR, 0.02)
    assert of_type(done, HandshakeCompleted)[0].peer is pair.to_client
    assert pair.authority.ticket_valid(pair.to_client.session_ticket, "udp",
                                       public_key(pair.client_key), WALL + 1)
    up = pair.relay.receive(transmits(pair.client.send(pair.to_server, [ipv4_packet()], 1.0)),
                            CLIENT_ADDR, 1.0)
    assert of_type(up, Received)[0].packets == [ipv4_packet()]
    down = pair.client.receive(transmits(pair.relay.send(pair.to_client, [ipv4_packet()], 1.0)),
                               SERVER_ADDR, 1.0)
    assert of_type(down, Received)[0].packets == [ipv4_packet()]


def test_a_device_without_the_static_key_holds_no_preshared_key_and_never_initiates() -> None:
    pair = Relayed()
    with pytest.raises(AuraError, match="preshared key"):
        pair.relay.add_peer(public_key(generate_private_key()), preshared_key=bytes(32))
    pair.to_client.endpoint = CLIENT_ADDR
    assert not transmits(pair.relay.initiate(pair.to_client, 0.0))
    # Data without a session waits for the client's own handshake instead of starting one.
    assert not transmits(pair.relay.send(pair.to_client, [ipv4_packet()], 0.0))
    assert not transmits(pair.relay.tick(30.0))
    with pytest.raises(AuraError):
        Device()


def test_the_authority_refuses_a_replay_whichever_carrier_brings_it() -> None:
    pair = Relayed()
    [request] = pair.requests(0.0)
    pair.answer(request, 0.0, "udp")
    with pytest.raises(HandshakeError, match="replayed initiation"):
        pair.answer(request, 5.0, "tcp")
    [fresh] = pair.requests(5.0)
    pair.answer(fresh, 5.0)
    [too_soon] = pair.requests(5.01)
    with pytest.raises(HandshakeError, match="initiation flood"):
        pair.answer(too_soon, 5.01)


def test_a_restarted_authority_given_the_replay_state_refuses_an_initiation_seen_before(
) -> None:
    pair = Relayed()
    [request] = pair.requests(0.0)
    pair.answer(request, 0.0)
    assert pair.authority.replay_state_changed
    saved = pair.authority.replay_state()
    assert not pair.authority.replay_state_changed
    # Restored before and after the peer is added: both refuse the replay.
    for restore_first in (True, False):
        restarted = HandshakeAuthority(pair.server_key)
        if restore_first:
            restarted.restore_replay_state(saved)
        restarted.add_peer(public_key(pair.client_key))
        if not restore_first:
            restarted.restore_replay_state(saved)
        with pytest.raises(HandshakeError, match="replayed initiation"):
            restarted.answer(request.initiation, request.local_index, "tcp", 100.0, WALL)
        [fresh] = pair.requests(100.0)
        restarted.answer(fresh.initiation, fresh.local_index, "tcp", 100.0, WALL)
    # Without it, the same initiation would be answered again.
    forgetful = HandshakeAuthority(pair.server_key)
    forgetful.add_peer(public_key(pair.client_key))
    forgetful.answer(request.initiation, request.local_index, "tcp", 100.0, WALL)


def test_the_authority_refuses_strangers_removed_peers_and_bad_mac1() -> None:
    pair = Relayed()
    [request] = pair.requests(0.0)
    bent = request.initiation[:116] + bytes(16) + request.initiation[132:]
    with pytest.raises(HandshakeError, match="bad mac1"):
        pair.authority.answer(bent, 1, "udp", 0.0, WALL)
    pair.authority.set_peers({})
    with pytest.raises(HandshakeError, match="unknown peer"):
        pair.answer(request, 0.0)


def test_set_peers_keeps_replay_state_of_every_peer_it_keeps() -> None:
    pair = Relayed()
    client = public_key(pair.client_key)
    [request] = pair.requests(0.0)
    pair.answer(request, 0.0)
    assert pair.authority.set_peers({client: None}) == []
    with pytest.raises(HandshakeError, match="replayed"):
        pair.answer(request, 1.0)
    # A new preshared key makes a new peer entry, but not a second chance for an old initiation.
    pair.authority.set_peers({client: bytes(range(32))})
    with pytest.raises(HandshakeError, match="replayed"):
        pair.answer(request, 2.0)
    [fresh] = pair.requests(2.0)
    answer = pair.answer(fresh, 2.0)
    assert answer.peer_public == client
    assert pair.authority.set_peers({bytes(32): None}) == [bytes(32)]  # low-order point
    assert client not in pair.authority


def test_tickets_bind_carrier_peer_keys_and_time_and_survive_a_restart() -> None:
    pair = Relayed(psk=bytes(range(32)))
    client = public_key(pair.client_key)
    [request] = pair.requests(0.0)
    ticket = pair.answer(request, 0.0, "udp").ticket
    restarted = HandshakeAuthority(pair.server_key)
    assert not restarted.ticket_valid(ticket, "udp", client, WALL)  # not a peer of it (yet)
    restarted.set_peers({client: bytes(range(32))})
    assert restarted.ticket_valid(ticket, "udp", client, WALL + TICKET_LIFETIME)
    assert not restarted.ticket_valid(ticket, "tcp", client, WALL)
    assert not restarted.ticket_valid(ticket, "udp", public_key(generate_private_key()), WALL)
    assert not restarted.ticket_valid(ticket, "udp", client, WALL + TICKET_LIFETIME + 60)
    assert not restarted.ticket_valid(ticket[:-1] + bytes([ticket[-1] ^ 1]), "udp", client, WALL)
    assert not restarted.ticket_valid(b"", "udp", client, WALL)
    other = HandshakeAuthority(generate_private_key())
    other.set_peers({client: bytes(range(32))})
    assert not other.ticket_valid(ticket, "udp", client, WALL)
    restarted.set_peers({client: bytes(32)})  # a new preshared key: a new session needed
    assert not restarted.ticket_valid(ticket, "udp", client, WALL)


def test_the_keys_tag_changes_with_either_key_and_only_then() -> None:
    server_key = generate_private_key()
    authority, again = HandshakeAuthority(server_key), HandshakeAuthority(server_key)
    client, other = public_key(generate_private_key()), public_key(generate_private_key())
    authority.set_peers({client: None, other: bytes(range(32))})
    tag = authority.keys_tag(client)
    again.set_peers({client: bytes(32), other: bytes(range(32))})  # zero psk is no psk
    assert again.keys_tag(client) == tag and len(tag) == 16  # also after a restart
    assert authority.keys_tag(other) not in (tag, b"")
    again.set_peers({client: bytes([1]) * 32})
    assert again.keys_tag(client) != tag
    assert again.keys_tag(other) == b""  # no longer a peer
    assert HandshakeAuthority(generate_private_key()).keys_tag(client) == b""


def test_answers_the_device_did_not_ask_for_are_dropped() -> None:
    pair = Relayed()
    [request] = pair.requests(0.0)
    answer = pair.answer(request, 0.0)
    assert drop_reasons(pair.relay.complete_handshake(request.local_index + 1, answer, 0.0)) == [
        "handshake answer for no initiation awaiting one"]
    pair.relay.remove_peer(public_key(pair.client_key))
    assert drop_reasons(pair.relay.complete_handshake(request.local_index, answer, 0.0)) == [
        "handshake answer for an unknown peer"]
    assert pair.relay.awaiting_authority == 0


def test_unanswered_initiations_expire_and_refusals_free_their_slot() -> None:
    pair = Relayed()
    [first] = pair.requests(0.0)
    assert pair.relay.awaiting_authority == 1
    assert drop_reasons(pair.relay.refuse_handshake(first.local_index, "replayed initiation", False,
                                                     0.0)) == [
        "handshake rejected: replayed initiation"]
    pair.requests(1.0)
    assert drop_reasons(pair.relay.tick(1.0 + REKEY_TIMEOUT)) == [
        "handshake authority did not answer"]
    assert pair.relay.awaiting_authority == 0


def test_initiations_awaiting_the_authority_count_as_load() -> None:
    pair = Relayed(under_load_after=3)
    pair.requests(0.0)
    pair.requests(0.1)
    events: list[Event] = pair.relay.receive(
        transmits(pair.client.initiate(pair.to_server, 0.2)), CLIENT_ADDR, 0.2)
    assert not of_type(events, HandshakeRequested)
    assert [d[0] for d in transmits(events)] == [3]  # a cookie reply: prove the source first
