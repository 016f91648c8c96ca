"""The router answers the handshakes transports forward: to the carrier alone, bounded per turn."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aura_common import ipc
from aura_common.errors import AuraError
from aura_common.ipc.frames import (
    FROM_ROUTER,
    TO_ROUTER,
    HandshakeRequest,
    HandshakesDone,
    SessionUp,
)
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import (
    Answer,
    Device,
    HandshakeAuthority,
    HandshakeCompleted,
    HandshakeRequested,
    generate_private_key,
    public_key,
)
from aura_common.wireguard.noise import HandshakeError, TransportKeys
from services.router import main as router_main
from services.router import replay
from services.router.main import HANDSHAKE_QUEUE, Router
from tests.unit.router_fakes import FakeTransport, new_router, router_config
from tests.unit.wireguard_pair import CLIENT_ADDR, SERVER_ADDR, of_type, transmits


def setup(tmp_path: Path) -> tuple[Any, bytes]:
    config = router_config(tmp_path)
    client_key = generate_private_key()
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", public_key(client_key), preshared_key=bytes(range(32)),
                          address_v4="10.77.0.2"))
    return config, client_key


def hs_done(link: FakeTransport) -> list[HandshakesDone]:
    return [f for f in link.frames if isinstance(f, HandshakesDone)]


def test_an_answer_goes_to_the_carrier_alone_and_its_ticket_claims_the_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, client_key = setup(tmp_path)

    async def scenario() -> None:
        router = new_router(config)
        server_public = router.authority.public_key
        relay = Device(public_key=server_public)
        to_client = relay.add_peer(public_key(client_key))
        client = Device(client_key)
        to_server = client.add_peer(server_public, preshared_key=bytes(range(32)),
                                    endpoint=SERVER_ADDR)
        udp, tcp = FakeTransport(1), FakeTransport(2)
        router.transports.update({udp: "udp", tcp: "tcp"})  # type: ignore[dict-item]
        [request] = of_type(relay.receive(transmits(client.initiate(to_server, 0.0)),
                                          CLIENT_ADDR, 0.0), HandshakeRequested)
        router._handshakes_from(udp, [HandshakeRequest(request.local_index, request.initiation)])  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert hs_done(tcp) == [] and len(hs_done(udp)) == 1
        [answered] = hs_done(udp)[0].answers
        ticket = answered.ticket
        answer = Answer(answered.peer_public_key, answered.response,
                        TransportKeys(answered.sending_key, answered.receiving_key),
                        answered.initiator_index, ticket)
        reply = relay.complete_handshake(answered.local_index, answer, 0.0)
        confirmation = client.receive(transmits(reply), SERVER_ADDR, 0.0)
        assert of_type(relay.receive(transmits(confirmation), CLIENT_ADDR, 0.0),
                       HandshakeCompleted)
        assert to_client.session_ticket == ticket
        frame = SessionUp("alice", "192.0.2.1:5", 1.0, ticket)
        with caplog.at_level(logging.WARNING, logger="aura-router"):
            router._session_up(tcp, frame)  # type: ignore[arg-type]
            assert router.sessions.get("alice") is None
            assert "transport tcp (pid 2) sent session_up for alice without the ticket" in (
                caplog.text)
        router._session_up(udp, frame)  # type: ignore[arg-type]
        session = router.sessions.get("alice")
        assert session is not None and session.link is udp
        assert router.handshakes_answered == 1

    asyncio.run(scenario())


def test_a_restarted_router_refuses_an_initiation_it_answered_before(tmp_path: Path) -> None:
    config, client_key = setup(tmp_path)
    server_key = generate_private_key()

    async def scenario() -> None:
        router = Router(config, HandshakeAuthority(server_key))
        client = Device(client_key)
        to_server = client.add_peer(router.authority.public_key,
                                    preshared_key=bytes(range(32)), endpoint=SERVER_ADDR)
        relay = Device(public_key=router.authority.public_key)
        relay.add_peer(public_key(client_key))
        [request] = of_type(relay.receive(transmits(client.initiate(to_server, 0.0)),
                                          CLIENT_ADDR, 0.0), HandshakeRequested)
        carried = [HandshakeRequest(request.local_index, request.initiation)]
        udp = FakeTransport(1)
        router.transports[udp] = "udp"  # type: ignore[index]
        router._handshakes_from(udp, carried)  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert router.handshakes_answered == 1
        router.check_limits()  # saves what was answered; a crash after this loses nothing
        restarted = Router(config, HandshakeAuthority(server_key))
        again = FakeTransport(2)
        restarted.transports[again] = "udp"  # type: ignore[index]
        restarted._handshakes_from(again, carried)  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert restarted.handshakes_answered == 0
        [refusal] = hs_done(again)[0].refused
        assert refusal.reason == "replayed initiation"

    asyncio.run(scenario())


def test_replay_file_round_trip_keeps_registered_peers_and_names_damage(tmp_path: Path) -> None:
    path = str(tmp_path / "handshake-timestamps.json")
    assert replay.load(path) == {}
    kept, gone = bytes(range(32)), bytes(32)
    replay.save(path, {kept: b"\x01" * 12, gone: b"\x02" * 12}, [kept])
    assert replay.load(path) == {kept: b"\x01" * 12}
    assert (tmp_path / "handshake-timestamps.json").stat().st_mode & 0o777 == 0o600
    for damaged in ('{"version": 1, "timestamps": {"AAAA": "00"}}', '{"version": 1}', "[]"):
        Path(path).write_text(damaged)
        with pytest.raises(AuraError, match=r"handshake-timestamps\.json"):
            replay.load(path)


def test_forwarded_handshakes_are_bounded_per_transport_and_per_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup(tmp_path)
    # A turn answers until its time is spent: with none to spend, one handshake per turn.
    monkeypatch.setattr(router_main, "HANDSHAKE_TURN_SECONDS", 0.0)

    async def scenario() -> None:
        router = new_router(config)
        udp = FakeTransport(1)
        router.transports[udp] = "udp"  # type: ignore[index]
        offered = HANDSHAKE_QUEUE + 44
        router._handshakes_from(udp, [HandshakeRequest(n, b"\x01" + bytes(147))  # type: ignore[arg-type]
                                      for n in range(offered)])
        assert router.handshakes_dropped == 44
        router._answer_handshakes()  # one turn: one answered (here: refused, bad mac1)
        assert router.handshakes_refused == 1
        await asyncio.sleep(0)
        overflow = hs_done(udp)[0]
        assert [r.reason for r in overflow.refused] == ["router handshake queue full"] * 44
        for _ in range(4 * HANDSHAKE_QUEUE):
            await asyncio.sleep(0)
        assert router.handshakes_refused == HANDSHAKE_QUEUE
        refused = [r for f in hs_done(udp)[1:] for r in f.refused]
        assert {r.reason for r in refused} == {"bad mac1"} and len(refused) == HANDSHAKE_QUEUE

    asyncio.run(scenario())


class RecordingCarrier:
    def __init__(self) -> None:
        self.sent: list[tuple[tuple[str, int], list[bytes]]] = []

    def transmit(self, destination: tuple[str, int], datagrams: Sequence[bytes]) -> None:
        self.sent.append((destination, list(datagrams)))


@contextlib.asynccontextmanager
async def udp_transport(
    router: Router, server_key: bytes
) -> AsyncIterator[tuple[SessionHub, RecordingCarrier]]:
    """A keyless UDP transport's hub served by `router` over a socket pair, its sends recorded."""
    hub = SessionHub("udp", Device(public_key=public_key(server_key)), "/unused")
    carrier = RecordingCarrier()
    hub.carrier = carrier
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = ipc.Channel(left, FROM_ROUTER, "router")
    served = ipc.Channel(right, TO_ROUTER, "udp")
    hub._router = link
    tasks = [asyncio.ensure_future(router.on_channel(served)),
             asyncio.ensure_future(hub._serve_router(link))]
    try:
        yield hub, carrier
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        link.close()
        served.close()


def test_a_transport_without_the_key_forwards_one_turn_in_one_frame_and_claims_its_sessions(
    tmp_path: Path,
) -> None:
    config = router_config(tmp_path)
    server_key = generate_private_key()
    clients = [generate_private_key() for _ in range(3)]
    with Registry.edit(config.peers_file) as registry:
        for n, key in enumerate(clients):
            registry.add(RegisteredPeer(f"peer{n}", public_key(key), preshared_key=bytes([n]) * 32,
                              address_v4=f"10.77.0.{n + 2}"))

    async def scenario() -> None:
        router = Router(config, HandshakeAuthority(server_key))
        forwarded: list[int] = []
        handshakes_from = router._handshakes_from

        def counting(channel: Any, items: list[HandshakeRequest]) -> None:
            forwarded.append(len(items))
            handshakes_from(channel, items)

        router._handshakes_from = counting  # type: ignore[method-assign]
        async with udp_transport(router, server_key) as (hub, carrier):
            while len(list(hub.device.peers)) < 3:
                await asyncio.sleep(0.01)
            devices = []
            batches = []
            for n, key in enumerate(clients):
                device = Device(key)
                peer = device.add_peer(public_key(server_key), preshared_key=bytes([n]) * 32,
                                       endpoint=SERVER_ADDR)
                devices.append((device, peer))
                batches.append((transmits(device.initiate(peer, time.monotonic())),
                                ("192.0.2.1", 1000 + n)))
            hub.received_batches(batches)
            while len(carrier.sent) < 3:
                await asyncio.sleep(0.01)
            assert forwarded == [3]  # one frame for the turn's three initiations
            for (device, _), (destination, responses) in zip(devices, carrier.sent, strict=True):
                confirmation = device.receive(responses, SERVER_ADDR, time.monotonic())
                assert of_type(confirmation, HandshakeCompleted)
                hub.received(transmits(confirmation), destination)
            while len(list(router.sessions)) < 3:
                await asyncio.sleep(0.01)
            assert {s.peer for s in router.sessions} == {"peer0", "peer1", "peer2"}
            assert router.handshakes_answered == 3

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_new_preshared_or_public_key_ends_the_peers_session_on_the_router_and_transport(
    tmp_path: Path,
) -> None:
    """The operator replaces a leaked key: the session made with the old one ends at once,
    its session keys leave the transport, its ticket no longer claims it, and the peer
    connects again with the new key. Other peers keep their sessions."""
    config = router_config(tmp_path)
    server_key = generate_private_key()
    alice_key, bob_key, carol_key = (generate_private_key() for _ in range(3))
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", public_key(alice_key), preshared_key=bytes(32),
                          address_v4="10.77.0.2"))
        registry.add(RegisteredPeer("bob", public_key(bob_key), address_v4="10.77.0.3"))
        registry.add(RegisteredPeer("carol", public_key(carol_key), address_v4="10.77.0.4"))

    async def scenario() -> None:
        router = Router(config, HandshakeAuthority(server_key))
        async with udp_transport(router, server_key) as (hub, carrier):

            async def until(condition: Any) -> None:
                while not condition():
                    await asyncio.sleep(0.01)

            async def connect(key: bytes, preshared_key: bytes | None, port: int) -> bool:
                """Whether a client with these keys completes a handshake (and sends its first
                data, which makes the session)."""
                device = Device(key)
                peer = device.add_peer(public_key(server_key), preshared_key=preshared_key,
                                       endpoint=SERVER_ADDR)
                sent, refused = len(carrier.sent), router.handshakes_refused
                hub.received(transmits(device.initiate(peer, time.monotonic())),
                             ("192.0.2.1", port))
                await until(lambda: len(carrier.sent) > sent or router.handshakes_refused > refused)
                if router.handshakes_refused > refused:
                    return False
                confirmation = device.receive(carrier.sent[-1][1], SERVER_ADDR, time.monotonic())
                if not of_type(confirmation, HandshakeCompleted):
                    return False
                hub.received(transmits(confirmation), ("192.0.2.1", port))
                return True

            await until(lambda: len(list(hub.device.peers)) == 3)
            assert await connect(alice_key, bytes(32), 1000)
            assert await connect(bob_key, None, 1001)
            assert await connect(carol_key, None, 1002)
            await until(lambda: len(list(router.sessions)) == 3)
            alice, carol = public_key(alice_key), public_key(carol_key)
            ticket = hub.device.peer(alice).session_ticket  # type: ignore[union-attr]
            new_carol_key = generate_private_key()

            with Registry.edit(config.peers_file) as registry:
                registry.add(dataclasses.replace(registry.revoke("alice"),
                                                 preshared_key=bytes([7]) * 32))
                registry.add(dataclasses.replace(registry.revoke("carol"),
                                                 public_key=public_key(new_carol_key)))
            router.reload()
            assert {s.peer for s in router.sessions} == {"bob"}  # ended at once, here
            now = time.monotonic()
            await until(lambda: not hub.device.peer(alice).has_session(now))  # type: ignore[union-attr]
            assert hub.device.peer(carol) is None
            assert hub.device.peer(public_key(bob_key)).has_session(now)  # type: ignore[union-attr]
            assert not router.authority.ticket_valid(ticket, "udp", alice, time.time())
            assert not await connect(alice_key, bytes(32), 1003)  # the old preshared key
            assert not await connect(carol_key, None, 1004)  # the old public key
            await until(lambda: hub.device.peer(public_key(new_carol_key)) is not None)
            assert await connect(alice_key, bytes([7]) * 32, 1005)
            assert await connect(new_carol_key, None, 1006)
            await until(lambda: len(list(router.sessions)) == 3)

    asyncio.run(asyncio.wait_for(scenario(), 30))


class FakeClock:
    """The router's `time` module, on a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1.7e9 + self.now


class SlowAuthority:
    """Refuses every initiation, each after `cost` seconds of the fake clock."""

    def __init__(self, clock: FakeClock, cost: float) -> None:
        self.clock, self.cost = clock, cost

    def answer(self, *args: object) -> None:
        self.clock.now += self.cost
        raise HandshakeError("bad mac1")


def test_while_data_moves_handshakes_get_only_their_share_of_the_router(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup(tmp_path)
    clock = FakeClock()
    monkeypatch.setattr(router_main, "time", clock)
    cost = 0.001  # a turn ends after one handshake (more than HANDSHAKE_TURN_SECONDS)

    async def scenario() -> None:
        router = new_router(config)
        router.authority = SlowAuthority(clock, cost)  # type: ignore[assignment]
        udp = FakeTransport(1)
        router.transports[udp] = "udp"  # type: ignore[index]
        router._handshakes_from(udp, [HandshakeRequest(n, b"\x01" + bytes(147))  # type: ignore[arg-type]
                                      for n in range(HANDSHAKE_QUEUE)])

        def turns(count: int, data: bool) -> int:
            before = router.handshakes_refused
            for _ in range(count):
                if data:
                    router._from_transport(udp, [])  # type: ignore[arg-type]
                router._answer_handshakes()
                clock.now += 0.0005  # the data path's part of the turn
            return router.handshakes_refused - before

        # No data: a handshake every turn, the loop's whole time.
        assert turns(40, data=False) == 40
        # Data moving: the saved-up burst, then a tenth of the time (40 turns: 60 ms).
        worked = turns(40, data=True)
        assert worked <= (router_main.HANDSHAKE_SHARE_BURST
                          + 0.06 * router_main.HANDSHAKE_SHARE) / cost + 1
        assert worked >= 2
        # The data stops: the whole time again.
        clock.now += router_main.HANDSHAKE_DATA_RECENT
        assert turns(40, data=False) == 40

    asyncio.run(scenario())
