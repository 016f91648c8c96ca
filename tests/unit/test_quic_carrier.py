"""aura-quic's carrier on loopback: a real WireGuard handshake in DATAGRAM frames, address
migration behind a rebinding NAT, the connection bound, broken-path reports, replies from the
address the client wrote to, bulk traffic in both directions, and clean closes."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from aura_common.config import QuicConfig
from aura_common.quic.link import MAX_MESSAGE, QUIC_PACKET_SIZE
from services.client.carriers.quic import TUNNEL_MTU
from services.client.carriers.quic import Carrier as QuicClient
from services.quic.carrier import QuicCarrier
from tests.unit.carrier_kit import (
    Initiator,
    Keys,
    ipv4_packet,
    keys,
    quic_server,
    raw_key,
    run,
)

__all__ = ["keys"]  # the module-scoped key fixture


class RebindingRelay(asyncio.DatagramProtocol):
    """A NAT on loopback: forwards client datagrams to the server from an outside port that
    `rebind()` changes, as a NAT does when its mapping expires."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: Any = None
        self.outside: asyncio.DatagramTransport | None = None
        self.inside: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inside = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        assert self.outside is not None
        self.outside.sendto(data, self.server)

    async def rebind(self) -> None:
        previous, relay = self.outside, self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                assert relay.inside is not None
                relay.inside.sendto(data, relay.client)

        self.outside, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Outside, local_addr=("127.0.0.1", 0))
        if previous is not None:
            previous.close()


class Counting(Initiator):
    def __init__(self, keys: Keys) -> None:
        super().__init__(keys)
        self.received = 0

    def deliver(self, datagrams: list[bytes]) -> None:
        self.received += len(datagrams)
        super().deliver(datagrams)


def server_sends_packet(carrier: QuicCarrier) -> None:
    hub = carrier.hub
    peer = next(iter(hub.device.peers))
    hub._handle(hub.device.send(peer, [ipv4_packet()], time.monotonic()))


def test_handshake_survives_address_migration(keys: Keys) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with quic_server(keys, QuicConfig()) as (carrier, port):
            relay = RebindingRelay(("127.0.0.1", port))
            await relay.rebind()
            inside, _ = await loop.create_datagram_endpoint(
                lambda: relay, local_addr=("127.0.0.1", 0))
            client = QuicClient(keys.client_config())
            initiator = Counting(keys)
            await client.open("127.0.0.1", inside.get_extra_info("sockname")[1],
                              initiator.deliver)
            await initiator.handshake(client)
            assert carrier.connections == 1
            stable = next(iter(carrier.hub.device.peers)).endpoint
            first_outside = relay.outside.get_extra_info("sockname")  # type: ignore[union-attr]

            await relay.rebind()
            assert relay.outside.get_extra_info("sockname") != first_outside  # type: ignore[union-attr]
            before = initiator.received
            for _ in range(30):  # the client's pings carry the new address to the server
                server_sends_packet(carrier)
                await asyncio.sleep(0.1)
                if initiator.received > before + 2:
                    break
            assert initiator.received > before + 2
            assert next(iter(carrier.hub.device.peers)).endpoint == stable
            assert carrier.connections == 1
            client.close()
            assert await client.wait_closed() == "closed by the client"
            await asyncio.sleep(0.3)
            assert carrier.connections == 0
            inside.close()

    run(scenario)


def test_connections_are_bounded(keys: Keys) -> None:
    async def scenario() -> None:
        async with quic_server(keys, QuicConfig(max_connections=1)) as (carrier, port):
            first = QuicClient(keys.client_config())
            initiator = Initiator(keys)
            await first.open("127.0.0.1", port, initiator.deliver)
            await initiator.handshake(first)  # authenticated: not to be closed for another
            for _ in range(40):
                if not carrier.pending:
                    break
                await asyncio.sleep(0.05)
            second = QuicClient(keys.client_config())
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.5):
                    await second.open("127.0.0.1", port, lambda datagrams: None)
            second.close()
            assert carrier.connections == 1
            first.close()

    run(scenario)


def test_server_gone_is_reported_within_seconds(keys: Keys) -> None:
    async def scenario() -> None:
        client = QuicClient(keys.client_config())
        async with quic_server(keys, QuicConfig()) as (_, port):
            await client.open("127.0.0.1", port, lambda datagrams: None)
        # the server closed its connections and its socket: the port is unreachable now
        client.transmit([b"\x04\0\0\0" + bytes(28)])
        async with asyncio.timeout(6):
            reason = await client.wait_closed()
        assert "QUIC" in reason or "no answer" in reason

    run(scenario)


def test_client_refuses_another_ca(keys: Keys, tmp_path: Any) -> None:
    from aura_common.pki import ca

    other = raw_key(ca.create_ca(tmp_path))

    async def scenario() -> None:
        async with quic_server(keys, QuicConfig()) as (_, port):
            client = QuicClient(keys.client_config(ca_public=other))
            with pytest.raises(ConnectionError, match="Aura CA"):
                await client.open("127.0.0.1", port, lambda datagrams: None)

    run(scenario)


@pytest.mark.parametrize("listen", ["0.0.0.0", "::"])
def test_replies_leave_from_the_address_the_client_wrote_to(keys: Keys, listen: str) -> None:
    """127.0.0.2 is a second address of the host: the kernel's own choice of source for a
    reply to 127.0.0.1 would be 127.0.0.1, which the client's connected socket drops."""

    async def scenario() -> None:
        async with quic_server(keys, QuicConfig(), listen) as (carrier, port):
            client = QuicClient(keys.client_config())
            initiator = Counting(keys)
            async with asyncio.timeout(5):
                await client.open("127.0.0.2", port, initiator.deliver)
            await initiator.handshake(client)
            assert carrier.connections == 1
            assert carrier.socket.dropped == 0
            client.close()

    run(scenario)


def test_bulk_messages_both_ways(keys: Keys) -> None:
    """Full-sized tunnel packets (the client's QUIC tunnel MTU), as many as the queues take,
    arrive in order of sending and in bursts (one hub call carries many), nothing is refused by
    the kernel, and no QUIC packet exceeds what crosses a 1500-byte path unfragmented."""
    bursts: list[int] = []
    sent_sizes: list[int] = []

    async def scenario() -> None:
        async with quic_server(keys, QuicConfig()) as (carrier, port):
            hub = carrier.hub
            hub_received = hub.received

            def counting(datagrams: Any, source: Any) -> None:
                bursts.append(len(datagrams))
                hub_received(datagrams, source)

            hub.received = counting  # type: ignore[method-assign]
            client = QuicClient(keys.client_config())
            initiator = Counting(keys)
            await client.open("127.0.0.1", port, initiator.deliver)
            await initiator.handshake(client)
            await asyncio.sleep(0.1)
            bursts.clear()
            downloaded_before = initiator.received
            assert client._socket is not None
            for sock in (carrier.socket, client._socket):
                sock.send = recording_sizes(sock.send, sent_sizes)  # type: ignore[method-assign]
            full = ipv4_packet(bytes(TUNNEL_MTU - 20))
            peer = next(iter(hub.device.peers))
            for _ in range(20):  # bounded: 20 rounds of 32 packets each way
                initiator.handle(initiator.device.send(initiator.peer, [full] * 32,
                                                       time.monotonic()))
                hub._handle(hub.device.send(peer, [full] * 32, time.monotonic()))
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            assert sum(bursts) == 20 * 32 - client.dropped > 20 * 16
            assert max(bursts) > 1
            assert initiator.received - downloaded_before == 20 * 32 - carrier.dropped > 20 * 16
            assert carrier.socket.dropped == 0
            assert max(sent_sizes) <= QUIC_PACKET_SIZE
            client.close()

    run(scenario)


def recording_sizes(send: Callable[..., None], sizes: list[int]) -> Callable[..., None]:
    @functools.wraps(send)
    def recorded(datagrams: Sequence[bytes], *args: Any) -> None:
        sizes.extend(map(len, datagrams))
        send(datagrams, *args)
    return recorded


def test_closing_stops_every_timer(keys: Keys) -> None:
    """A failed or closed attempt leaves nothing behind that still fires (the QUIC timer
    used to send through a closed transport and log an exception)."""
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(
            context))
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers
        silent.bind(("127.0.0.1", 0))
        failed = QuicClient(keys.client_config())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await failed.open("127.0.0.1", silent.getsockname()[1], lambda d: None)
        failed.close()
        async with quic_server(keys, QuicConfig()) as (_, port):
            client = QuicClient(keys.client_config())
            await client.open("127.0.0.1", port, lambda datagrams: None)
            client.close()
            assert await client.wait_closed() == "closed by the client"
        await asyncio.sleep(1.5)  # past the retransmission and closing timers
        silent.close()
        pending = [task for task in asyncio.all_tasks()
                   if task is not asyncio.current_task()]
        assert pending == []

    run(scenario)
    assert errors == []


def test_a_whole_tun_read_leaves_and_an_oversized_message_is_dropped_alone(keys: Keys) -> None:
    """One TUN read can hand the carrier hundreds of full-sized messages: all of them leave.
    A message no QUIC packet fits is dropped and counted; it must not reach qh3, which would
    fail every later transmit of the connection."""
    received: list[int] = []

    async def scenario() -> None:
        async with quic_server(keys, QuicConfig()) as (carrier, port):
            client = QuicClient(keys.client_config())
            initiator = Initiator(keys)
            await client.open("127.0.0.1", port, initiator.deliver)
            await initiator.handshake(client)  # past the unauthenticated byte bound
            for _ in range(40):  # until the confirming data message has arrived
                if not carrier.pending:
                    break
                await asyncio.sleep(0.05)
            carrier.hub.received = (  # type: ignore[method-assign]
                lambda datagrams, source: received.append(len(datagrams)))
            message = bytes(TUNNEL_MTU + 32)
            batch = 400  # 560 KB, more than the old 256 KiB queue held
            client.transmit([bytes(MAX_MESSAGE + 1)] + [message] * batch)
            client.transmit([message])
            for _ in range(50):
                await asyncio.sleep(0.05)
                if sum(received) == batch + 1:
                    break
            assert client.dropped == 1
            assert sum(received) == batch + 1
            client.close()

    run(scenario)


def test_messages_before_the_quic_handshake_are_dropped(keys: Keys) -> None:
    """The client's WireGuard may retransmit an initiation while the QUIC handshake is still
    under way: qh3 takes no DATAGRAM frame before it, so the message is dropped and counted
    instead of ending the client with an exception."""

    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers
        silent.bind(("127.0.0.1", 0))
        client = QuicClient(keys.client_config())
        opening = asyncio.create_task(client.open("127.0.0.1", silent.getsockname()[1],
                                                  lambda datagrams: None))
        await asyncio.sleep(0.1)
        client.transmit([bytes(148)])
        assert client.dropped == 1
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        client.close()
        silent.close()

    run(scenario)


def test_an_acknowledgement_waits_for_a_reply_to_carry_it(keys: Keys) -> None:
    """Two full-sized packets make qh3 owe an acknowledgement at once. Once the tunnel is up,
    each end holds it for the reply the flows inside send back, so one packet carries both;
    with no reply it still leaves, alone."""
    two = [ipv4_packet(bytes(TUNNEL_MTU - 20))] * 2

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with quic_server(keys, QuicConfig()) as (carrier, port):
            hub, client = carrier.hub, QuicClient(keys.client_config())
            initiator = Counting(keys)
            # (messages delivered, then what to do) for the client's side
            on_deliver: list[tuple[int, Callable[[], None]]] = []

            def deliver(datagrams: list[bytes]) -> None:
                initiator.deliver(datagrams)
                if on_deliver and initiator.received >= on_deliver[0][0]:
                    loop.call_soon(on_deliver.pop()[1])  # before any timer falls due

            await client.open("127.0.0.1", port, deliver)
            await initiator.handshake(client)
            assert client._keepalive is not None and client._socket is not None
            client._keepalive.cancel()  # its pings would be acknowledged too
            await asyncio.sleep(0.2)  # the handshake's acknowledgements have left
            peer = next(iter(hub.device.peers))
            hub_received = hub.received

            def server_replies(datagrams: Any, source: Any) -> None:
                hub_received(datagrams, source)
                server_got.extend(datagrams)
                if len(server_got) >= 2:
                    hub.received = hub_received  # type: ignore[method-assign]
                    loop.call_soon(reply, lambda: server_sends_packet(carrier))

            sent: list[int] = []
            before_reply: list[int] = []
            server_got: list[bytes] = []

            def reply(send: Callable[[], None]) -> None:
                before_reply.append(len(sent))
                send()

            for sock, upload in ((carrier.socket, True), (client._socket, False)):
                sock.send = recording_sizes(sock.send, sent)  # type: ignore[method-assign]
                # a burst answered at once
                if upload:
                    hub.received = server_replies  # type: ignore[method-assign]
                    initiator.handle(initiator.device.send(initiator.peer, two,
                                                           time.monotonic()))
                else:
                    on_deliver.append((initiator.received + 2, lambda: reply(
                        lambda: initiator.handle(initiator.device.send(
                            initiator.peer, [ipv4_packet()], time.monotonic())))))
                    hub._handle(hub.device.send(peer, two, time.monotonic()))
                await asyncio.sleep(0.1)
                assert before_reply == [0], "an acknowledgement left alone before the reply"
                assert len(sent) == 1, "the reply did not carry the acknowledgement"
                # a burst nobody answers
                sent.clear()
                before_reply.clear()
                if upload:
                    initiator.handle(initiator.device.send(initiator.peer, two,
                                                           time.monotonic()))
                else:
                    hub._handle(hub.device.send(peer, two, time.monotonic()))
                await asyncio.sleep(0.1)
                assert len(sent) == 1 and sent[0] < 64, "no acknowledgement left alone"
                sent.clear()
                sock.send = sock.send.__wrapped__  # type: ignore[attr-defined, method-assign]
            client.close()

    run(scenario)
