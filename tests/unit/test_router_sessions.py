"""The router's session table: dispatch by destination, source checks, moves between transports."""

from __future__ import annotations

import ipaddress
import struct
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from services.router.sessions import SessionTable, destination_of, source_of
from tests.unit.router_fakes import ipv4


def ipv6(src: str, dst: str, payload: bytes = b"y" * 8) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), 17, 64,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header + payload


def table() -> SessionTable[str]:
    sessions: SessionTable[str] = SessionTable()
    sessions.up("alice", "udp-link", "udp", "192.0.2.1:5000", ["10.77.0.2", "fd77::2"], 1.0)
    sessions.up("bob", "udp-link", "udp", "192.0.2.2:5000", ["10.77.0.3"], 1.0)
    return sessions


def test_dispatch_groups_packets_by_owner_in_order_and_counts() -> None:
    sessions = table()
    a1, b1, a2 = ipv4("1.1.1.1", "10.77.0.2"), ipv4("1.1.1.1", "10.77.0.3"), ipv6("::1", "fd77::2")
    stray = ipv4("1.1.1.1", "10.77.0.99")
    batches = sessions.dispatch([a1, b1, stray, a2])
    by_peer = {session.peer: batch for session, batch in batches.items()}
    assert by_peer == {"alice": [a1, a2], "bob": [b1]}
    assert sessions.unroutable == 1
    alice = sessions.get("alice")
    assert alice is not None and alice.tx_packets == 2 and alice.tx_bytes == len(a1) + len(a2)


def test_accept_keeps_only_packets_from_the_peers_own_addresses() -> None:
    sessions = table()
    good = ipv4("10.77.0.2", "8.8.8.8")
    spoofed = ipv4("10.77.0.3", "8.8.8.8")  # bob's address, sent by alice
    control = bytes([0xA7, 1, 0, 0])
    assert sessions.accept("alice", "udp-link", [good, spoofed, control, b""]) == [good]
    assert sessions.spoofed == 3
    assert sessions.accept("alice", "other-link", [good]) == []  # not where alice lives


def test_moving_to_another_transport_reroutes_and_keeps_counters() -> None:
    sessions = table()
    sessions.dispatch([ipv4("1.1.1.1", "10.77.0.2")])
    session, new = sessions.up("alice", "tcp-link", "tcp", "192.0.2.1:6000",
                               ["10.77.0.2", "fd77::2"], 2.0)
    assert new and session.transport == "tcp" and session.tx_packets == 1
    batches = sessions.dispatch([ipv4("1.1.1.1", "10.77.0.2")])
    assert [s.link for s in batches] == ["tcp-link"]
    # The old transport reporting the session down must not tear down the new one.
    assert sessions.down("alice", "udp-link") is None
    assert sessions.get("alice") is session


def test_re_registration_on_the_same_link_is_not_new() -> None:
    sessions = table()
    session, new = sessions.up("alice", "udp-link", "udp", "192.0.2.9:7000",
                               ["10.77.0.2", "fd77::2"], 5.0)
    assert not new and session.endpoint == "192.0.2.9:7000" and session.handshake_at == 5.0


def test_dropping_a_link_ends_its_sessions_only() -> None:
    sessions = table()
    sessions.up("carol", "quic-link", "quic", "192.0.2.3:1", ["10.77.0.4"], 1.0)
    gone = sessions.drop_link("udp-link")
    assert sorted(s.peer for s in gone) == ["alice", "bob"]
    assert [s.peer for s in sessions] == ["carol"]
    assert sessions.dispatch([ipv4("1.1.1.1", "10.77.0.2")]) == {}


@given(st.binary(max_size=64))
def test_address_extraction_never_raises(packet: bytes) -> None:
    if packet:
        assert len(source_of(packet)) in (0, 4, 16) or len(packet) < 40
        destination_of(packet)


def test_a_live_session_costs_the_router_a_few_hundred_bytes() -> None:
    """A server holds thousands of sessions: each is a slotted object (no instance dict) and,
    with its table entries, address and counters, stays within 320 bytes."""
    peers = [(f"peer{i}", f"192.0.2.{i % 250}:{40000 + i}", [f"10.77.{i // 250}.{i % 250 + 2}"])
             for i in range(1000)]
    sessions: SessionTable[str] = SessionTable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for name, endpoint, addresses in peers:
            sessions.up(name, "udp-link", "udp", endpoint, addresses, 1.0)
        per_session = (tracemalloc.get_traced_memory()[0] - before) / len(peers)
    finally:
        tracemalloc.stop()
    session = sessions.get("peer0")
    assert session is not None and not hasattr(session, "__dict__")
    assert per_session < 320
