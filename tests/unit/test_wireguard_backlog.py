"""The handshake backlog: sources with nothing queued lately go first, and its bounds."""

from __future__ import annotations

import asyncio

from aura_common.ipc.frames import HandshakeRefusal, Handshakes, HandshakesDone
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import (
    Device,
    HandshakeRequested,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.backlog import HandshakeBacklog
from aura_common.wireguard.limits import AUTHORITY_WINDOW, FRESH_AFTER, HANDSHAKE_QUEUE_SIZE
from aura_lab.flood import junk_initiation
from tests.unit.wireguard_pair import CLIENT_ADDR, Relayed, of_type, transmits


def flood_sources(count: int) -> list[tuple[str, int]]:
    """`count` sources, each in an IPv6 /64 of its own."""
    return [(f"2001:db8:a000:{n:x}::1", 1000) for n in range(count)]


def test_a_new_source_goes_ahead_of_sources_queued_lately() -> None:
    backlog = HandshakeBacklog()
    flood = flood_sources(100)
    for source in flood:
        backlog.add(b"first", source, 0.0, False)
    assert [backlog.pop()[1] for _ in flood] == flood  # new sources, in arrival order
    for source in flood:  # again, within FRESH_AFTER: behind
        backlog.add(b"again", source, 1.0, False)
    backlog.add(b"new", CLIENT_ADDR, 1.0, False)
    assert backlog.pop() == (b"new", CLIENT_ADDR, False)
    assert [backlog.pop()[1] for _ in flood] == flood
    assert len(backlog) == 0
    for source in flood:  # FRESH_AFTER later they are new again
        backlog.add(b"later", source, 1.0 + FRESH_AFTER, False)
    backlog.add(b"new", CLIENT_ADDR, 1.0 + FRESH_AFTER, False)
    assert backlog.pop()[1] == flood[0]


def test_sources_are_keyed_as_the_rate_limit_keys_them() -> None:
    backlog = HandshakeBacklog()
    backlog.add(b"a", ("2001:db8:a000:1::1", 1000), 0.0, False)
    backlog.add(b"b", ("2001:db8:a000:1::2", 2000), 0.0, False)  # the same /64: behind
    backlog.add(b"c", ("::ffff:192.0.2.1", 1000), 0.0, False)
    backlog.add(b"d", ("192.0.2.1", 3000), 0.0, False)  # the same IPv4 address: behind
    assert [backlog.pop()[0] for _ in range(4)] == [b"a", b"c", b"b", b"d"]


def test_when_full_a_new_source_takes_the_place_of_the_newest_behind() -> None:
    backlog = HandshakeBacklog(capacity=4)
    attacker = ("192.0.2.66", 5555)
    for n in range(4):
        assert backlog.add(b"flood%d" % n, attacker, 0.0, False) is None
    assert backlog.add(b"flood4", attacker, 0.0, False) == attacker  # full: itself dropped
    assert backlog.add(b"new", CLIENT_ADDR, 0.0, False) == attacker  # flood3 made room
    assert [backlog.pop()[0] for _ in range(4)] == [b"flood0", b"new", b"flood1", b"flood2"]
    for n in range(4):  # a backlog of new sources only: the next new one is dropped
        backlog.add(b"x", (f"198.51.100.{n}", 1), 0.0, False)
    assert backlog.add(b"y", ("203.0.113.1", 1), 0.0, False) == ("203.0.113.1", 1)
    assert len(backlog) == 4


def test_a_source_dropped_for_want_of_room_is_not_new_again_until_fresh_after() -> None:
    backlog = HandshakeBacklog(capacity=2)
    for n in range(2):
        backlog.add(b"x", (f"198.51.100.{n}", 1), 0.0, False)
    flood = ("2001:db8:a000:1::1", 1000)
    assert backlog.fresh(flood, 0.0)
    assert backlog.add(b"flood", flood, 0.0, False) == flood  # only new sources queued: dropped
    # It had its turn: no longer ahead of anyone (nor kept first by a carrier's read).
    assert not backlog.fresh(flood, 1.0)
    assert backlog.fresh(flood, FRESH_AFTER)


def test_remembered_sources_are_bounded_the_longest_queued_forgotten_first() -> None:
    backlog = HandshakeBacklog(sources=2)
    first, second, third = ("192.0.2.1", 1), ("192.0.2.2", 1), ("192.0.2.3", 1)
    for source in (first, second, third):
        backlog.add(b"", source, 0.0, False)
    assert len(backlog._queued_at) == 2
    backlog.add(b"again", second, 0.1, False)  # remembered: behind
    backlog.add(b"again", first, 0.1, False)  # forgotten: new again
    assert [backlog.pop() for _ in range(5)][3:] == [(b"again", first, False),
                                                         (b"again", second, False)]


def test_a_relay_hands_its_authority_a_window_and_a_new_client_goes_next() -> None:
    pair = Relayed(under_load_after=10_000)  # never under load: every initiation queues
    relay, server_public = pair.relay, public_key(pair.server_key)
    flood = flood_sources(3 * AUTHORITY_WINDOW)
    asked: list[HandshakeRequested] = []

    def receive(batches: list, now: float) -> None:
        asked.extend(of_type(relay.receive_batches(batches, now), HandshakeRequested))
        while relay.handshakes_pending:
            asked.extend(of_type(relay.process_handshakes(now), HandshakeRequested))

    def refuse(count: int, now: float) -> None:
        for request in asked[:count]:
            relay.refuse_handshake(request.local_index, "authentication failed", True, now)
        del asked[:count]

    receive([([junk_initiation(server_public)], source) for source in flood], 0.0)
    while asked:  # the authority refuses them all, a window at a time
        assert len(asked) == relay.awaiting_authority == AUTHORITY_WINDOW
        refuse(len(asked), 0.0)
        receive([], 0.0)
    # The same sources again, and meanwhile a client initiates: the window is full.
    receive([([junk_initiation(server_public)], source) for source in flood], 1.0)
    receive([(transmits(pair.client.initiate(pair.to_server, 1.0)), CLIENT_ADDR)], 1.0)
    assert len(asked) == relay.awaiting_authority == AUTHORITY_WINDOW
    assert CLIENT_ADDR not in [request.source for request in asked]
    refuse(1, 1.0)  # one answer makes room: for the client, ahead of the flood's backlog
    receive([], 1.0)
    assert asked[-1].source == CLIENT_ADDR


class RecordingRouter:
    """Stands in for the router link: keeps the `hs` frames the hub sends."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def send(self, frame: Handshakes) -> bool:
        self.asked += [item.local_index for item in frame.items]
        return True


def test_the_hub_asks_the_router_for_more_as_its_answers_come() -> None:
    server_key = generate_private_key()
    hub = SessionHub("udp", Device(public_key=public_key(server_key), under_load_after=10_000),
                     "/nonexistent/router.sock")
    router = RecordingRouter()
    hub._router = router  # type: ignore[assignment]
    flood = [([junk_initiation(public_key(server_key))], source)
             for source in flood_sources(2 * AUTHORITY_WINDOW)]

    async def settled() -> None:
        """Turns of the loop until the hub has nothing more it can do now."""
        for _ in range(1000):
            await asyncio.sleep(0)
            if not (hub.device.handshakes_pending or hub._requests_scheduled):
                return

    async def flood_then_answers() -> list[int]:
        hub.received_batches(flood)
        await settled()
        asked = [len(router.asked)]
        hub._router_answered(HandshakesDone([], [
            HandshakeRefusal(index, "authentication failed", True) for index in router.asked]))
        await settled()
        return [*asked, len(router.asked)]

    assert asyncio.run(flood_then_answers()) == [AUTHORITY_WINDOW, 2 * AUTHORITY_WINDOW]


def test_a_full_backlog_names_what_it_would_drop_before_it_is_read() -> None:
    backlog = HandshakeBacklog(capacity=2)
    attacker = ("192.0.2.66", 5555)
    assert not backlog.would_drop(attacker, 0.0)
    backlog.add(b"a", attacker, 0.0, False)
    backlog.add(b"b", attacker, 0.0, False)
    assert backlog.would_drop(attacker, 0.0)  # full, and queued lately: shed unread
    assert not backlog.would_drop(CLIENT_ADDR, 0.0)  # a new source still gets in
    assert backlog.add(b"new", CLIENT_ADDR, 0.0, False) == attacker
    assert backlog.would_drop(("198.51.100.9", 1), 0.0)  # nothing behind left to displace


def test_while_the_queue_is_full_a_carrier_sheds_a_lately_queued_source_first() -> None:
    pair = Relayed(under_load_after=10_000)  # never under load: only the full queue sheds
    relay, server_public = pair.relay, public_key(pair.server_key)
    attacker = ("2001:db8:a000::1", 1000)
    for _ in range(2):  # the second fills the queue again behind the window handed out
        relay.receive([junk_initiation(server_public) for _ in range(HANDSHAKE_QUEUE_SIZE)],
                      attacker, 0.0)
        while relay.handshakes_pending:
            relay.process_handshakes(0.0)
    assert relay.awaiting_authority == AUTHORITY_WINDOW
    assert relay.shed_first(attacker, 0.0)
    assert not relay.shed_first(CLIENT_ADDR, 0.0)
