"""UDP GSO sends and GRO receives on loopback (aura_common.netio.udp)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.netio import udp
from aura_common.netio.udp import (
    CALL_BYTES,
    MMSG_SLOTS,
    TUNNEL_SOCKET_BUFFER,
    enable_gro,
    enable_pktinfo,
    enlarge_buffers,
    recv_batch,
    recv_batch_with_local,
    send_batch,
)

SO_NO_CHECK = 11  # disables UDP checksums on send, which the kernel's UDP GSO refuses
SO_RCVBUFFORCE = 33  # as root, a receive buffer beyond rmem_max so bursts are not dropped


def make_pair(family: int, gro: bool) -> tuple[socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    receiver = socket.socket(family, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    receiver.bind((host, 0))
    if gro:
        assert enable_gro(receiver)
    sender = socket.socket(family, socket.SOCK_DGRAM)
    sender.bind((host, 0))
    return sender, receiver


@pytest.fixture(params=[(socket.AF_INET, True), (socket.AF_INET, False), (socket.AF_INET6, True),
                        (socket.AF_INET6, False)], ids=["v4-gro", "v4", "v6-gro", "v6"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    sender, receiver = make_pair(*request.param)
    yield sender, receiver
    sender.close()
    receiver.close()


def receive(receiver: socket.socket, count: int, timeout: float = 3.0) -> list[bytes]:
    """Everything that arrives until `count` datagrams did or `timeout` passes."""
    received: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        for datagrams, _source in recv_batch(receiver):
            received += datagrams
        if len(received) < count:
            time.sleep(0.005)
    return received


def payloads(sizes: list[int]) -> list[bytes]:
    return [bytes([index % 251]) * size for index, size in enumerate(sizes)]


def test_equal_sized_datagrams_arrive_as_sent(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    datagrams = payloads([1200] * 150)
    assert send_batch(sender, datagrams, receiver.getsockname()[:2]) == 150
    assert receive(receiver, 150) == datagrams


def test_mixed_sizes_keep_order_and_boundaries(pair: tuple[socket.socket, socket.socket]) -> None:
    sender, receiver = pair
    sizes = [1000, 1000, 999, 1000, 1, 0, 0, 1400, 1400, 1400, 64, 1500, *[200] * 70, 30000, 30000]
    datagrams = payloads(sizes)
    assert send_batch(sender, datagrams, receiver.getsockname()[:2]) == len(datagrams)
    assert receive(receiver, len(datagrams)) == datagrams


def test_one_receive_call_returns_a_whole_gso_send() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=True)
    with sender, receiver:
        datagrams = payloads([1300] * 40)
        send_batch(sender, datagrams, receiver.getsockname())
        time.sleep(0.05)
        batches = recv_batch(receiver, limit=1)
        assert batches == [(datagrams, sender.getsockname())]


def test_a_source_keeps_one_batch_while_another_interleaves() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=False)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sender, receiver, other:
        other.bind(("127.0.0.1", 0))
        destination = receiver.getsockname()
        for n in range(3):
            send_batch(sender, [b"data%d" % n], destination)
            send_batch(other, [b"junk%d" % n], destination)
        time.sleep(0.05)
        assert recv_batch(receiver) == [
            ([b"data0", b"data1", b"data2"], sender.getsockname()),
            ([b"junk0", b"junk1", b"junk2"], other.getsockname()),
        ]


def test_sources_are_reported_and_consecutive_ones_grouped() -> None:
    sender, receiver = make_pair(socket.AF_INET6, gro=False)
    other = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    with sender, receiver, other:
        other.bind(("::1", 0))
        destination = receiver.getsockname()[:2]
        send_batch(sender, [b"a", b"b"], destination)
        time.sleep(0.02)
        send_batch(other, [b"c"], destination)
        time.sleep(0.05)
        assert recv_batch(receiver) == [
            ([b"a", b"b"], ("::1", sender.getsockname()[1])),
            ([b"c"], ("::1", other.getsockname()[1])),
        ]


def test_recv_batch_on_an_empty_socket_returns_nothing_without_blocking() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=True)
    with sender, receiver:
        started = time.monotonic()
        assert recv_batch(receiver) == []
        assert time.monotonic() - started < 0.5


def test_refused_gso_falls_back_to_plain_sends_for_good() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=True)
    with sender, receiver:
        sender.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        datagrams = payloads([800] * 20)
        assert send_batch(sender, datagrams, receiver.getsockname()) == 20
        assert receive(receiver, 20) == datagrams
        send_batch(sender, datagrams, receiver.getsockname())
        time.sleep(0.05)
        first_call = recv_batch(receiver, limit=1)
        assert first_call == [([datagrams[0]], sender.getsockname())]  # one datagram per send


def test_unsendable_datagrams_are_dropped_not_raised() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=False)
    with sender, receiver:
        too_big = [b"x" * 70000, b"y" * 70000]
        assert send_batch(sender, too_big, receiver.getsockname()) == 0
        assert send_batch(sender, [b"ok"], receiver.getsockname()) == 1


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["v4", "dual-stack"])
def test_a_wildcard_socket_answers_from_the_address_the_client_wrote_to(family: int) -> None:
    # Loopback has every 127/8 address; a reply to 127.0.0.5 would leave from 127.0.0.1, which
    # a client connected to 127.0.0.2 (like the Aura client, a NAT or a firewall) drops.
    server = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with server, client:
        server.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        enable_gro(server)
        enable_pktinfo(server)
        client.bind(("127.0.0.5", 0))
        client.connect(("127.0.0.2", server.getsockname()[1]))
        client.send(b"hello")
        time.sleep(0.05)
        [(datagrams, source, local)] = recv_batch_with_local(server)
        assert datagrams == [b"hello"]
        assert local == ("::ffff:127.0.0.2" if family == socket.AF_INET6 else "127.0.0.2")
        replies = payloads([300] * 5)
        assert send_batch(server, replies, source, local) == 5
        assert receive(client, 5) == replies


def test_tunnel_sockets_get_buffers_for_bursts() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        enlarge_buffers(sock)
        # The kernel reports double the size asked for (it counts its bookkeeping too).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= TUNNEL_SOCKET_BUFFER
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= TUNNEL_SOCKET_BUFFER


def test_a_source_address_the_host_lacks_falls_back_to_any() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=True)
    with sender, receiver:
        datagrams = payloads([500] * 4 + [20])
        assert send_batch(sender, datagrams, receiver.getsockname(), "192.0.2.1") == 5
        assert receive(receiver, 5) == datagrams


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([0, 1, 100, 1199, 1200, 1201, 1452]), max_size=200),
       st.booleans())
def test_any_size_sequence_round_trips(sizes: list[int], gro: bool) -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=gro)
    with sender, receiver:
        datagrams = payloads(sizes)
        assert send_batch(sender, datagrams, receiver.getsockname()) == len(datagrams)
        assert receive(receiver, len(datagrams), timeout=2.0) == datagrams


def test_a_read_stops_at_its_byte_budget_and_leaves_the_rest_queued() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=False)
    with sender, receiver:
        for datagram in payloads([1000] * 10):
            sender.sendto(datagram, receiver.getsockname())
        time.sleep(0.05)
        first = recv_batch_with_local(receiver, limit=64, max_bytes=3000)
        assert sum(len(batch[0]) for batch in first) == 3
        rest = recv_batch_with_local(receiver, limit=64)
        assert sum(len(batch[0]) for batch in rest) == 7


def test_a_read_takes_at_most_its_limit_of_receives_over_several_calls() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=False)
    with sender, receiver:
        for datagram in payloads([100] * 150):
            sender.sendto(datagram, receiver.getsockname())
        time.sleep(0.05)
        limit = MMSG_SLOTS + 6  # more than one call holds
        [(first, _source, _local)] = recv_batch_with_local(receiver, limit=limit)
        [(rest, _source, _local)] = recv_batch_with_local(receiver, limit=1000)
        assert (len(first), len(rest)) == (limit, 150 - limit)
        assert first + rest == payloads([100] * 150)


def test_sources_are_named_as_the_socket_module_names_them(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(udp, "_ENDPOINTS_LIMIT", 2)  # a flood's sources: bounded, still right
    monkeypatch.setattr(udp, "_endpoints", {})
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    senders = [socket.socket(family, socket.SOCK_DGRAM)
               for family in (socket.AF_INET, socket.AF_INET6, socket.AF_INET)]
    with receiver, senders[0], senders[1], senders[2]:
        receiver.bind(("::", 0))
        port = receiver.getsockname()[1]
        for sender, host in zip(senders, ("127.0.0.1", "::1", "127.0.0.1"), strict=True):
            sender.bind((host, 0))
            sender.sendto(b"x", (host, port))
        time.sleep(0.05)
        sources = [source for _datagrams, source in recv_batch(receiver)]
        for sender in senders:
            sender.sendto(b"y", ("127.0.0.1" if sender.family == socket.AF_INET else "::1",
                                 port))
        time.sleep(0.05)
        expected = [receiver.recvfrom(10)[1][:2] for _ in senders]
        assert sources == expected
        assert expected[0][0] == "::ffff:127.0.0.1"
        assert len(udp._endpoints) <= 2


def test_a_call_asks_for_as_many_receives_as_fit_its_bytes() -> None:
    sender, receiver = make_pair(socket.AF_INET, gro=True)
    with sender, receiver:
        train = payloads([1300] * 40)  # one GSO send, one receive: 52,000 bytes
        send_batch(sender, train, receiver.getsockname())
        time.sleep(0.05)
        assert recv_batch(receiver) == [(train, sender.getsockname())]
        assert udp._slots.next_count == CALL_BYTES // 52_000  # a few trains, copied out warm
        send_batch(sender, [b"small"], receiver.getsockname())
        time.sleep(0.05)
        recv_batch(receiver)
        assert udp._slots.next_count == MMSG_SLOTS  # small datagrams: every slot
