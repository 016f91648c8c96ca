"""A transport may act only for the sessions it holds, and only with its peers' addresses."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from aura_common.state.registry import RegisteredPeer
from tests.unit.router_fakes import FakeTransport, claim, new_router, router_config


def ipv4_from(source: str) -> bytes:
    header = bytearray(20)
    header[0] = 0x45
    header[12:16] = bytes(int(p) for p in source.split("."))
    header[16:20] = bytes([10, 77, 0, 1])
    return bytes(header)


class FakeTun:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_batch(self, packets: list[bytes]) -> None:
        self.written.extend(packets)


def test_packets_for_another_transports_session_or_with_foreign_sources_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = router_config(
        tmp_path,
        RegisteredPeer("alice", b"a" * 32, address_v4="10.77.0.2"),
        RegisteredPeer("bob", b"b" * 32, address_v4="10.77.0.3"),
    )

    async def scenario() -> None:
        router = new_router(config)
        tun = FakeTun()
        router.tun = tun  # type: ignore[assignment]
        udp, tcp = FakeTransport(1), FakeTransport(2)
        router.transports.update({udp: "udp", tcp: "tcp"})  # type: ignore[dict-item]
        claim(router, tcp, "alice")
        claim(router, udp, "bob", "192.0.2.2:5")
        with caplog.at_level(logging.WARNING, logger="aura-router"):
            router._from_transport(udp, [("alice", [ipv4_from("10.77.0.2")])])  # type: ignore[arg-type]
            assert tun.written == []
            assert "transport udp (pid 1) sent packets for 'alice', which has no session" in (
                caplog.text)
            router._end_session("alice", udp, "ended")  # type: ignore[arg-type]
            assert router.sessions.get("alice") is not None
            router._from_transport(tcp, [("alice", [ipv4_from("10.77.0.3")])])  # type: ignore[arg-type]
            assert tun.written == []
            assert "transport tcp (pid 2) sent packets from alice with a source address" in (
                caplog.text)
        router._from_transport(tcp, [("alice", [ipv4_from("10.77.0.2")])])  # type: ignore[arg-type]
        assert tun.written == [ipv4_from("10.77.0.2")]

    asyncio.run(scenario())


def test_a_ticket_older_than_the_session_cannot_take_it_back_to_another_transport(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A transport keeps the tickets of the peers it carried; after a peer moved on, one of
    them (valid 180 s) must not pull the peer's downlink back to the transport it left."""
    config = router_config(tmp_path, RegisteredPeer("alice", b"a" * 32, address_v4="10.77.0.2"))

    async def scenario() -> None:
        router = new_router(config)
        udp, tcp = FakeTransport(1), FakeTransport(2)
        router.transports.update({udp: "udp", tcp: "tcp"})  # type: ignore[dict-item]
        now = time.time()
        old = router.authority.ticket("udp", b"a" * 32, now - 60)
        claim(router, udp, "alice", ticket=old)
        claim(router, tcp, "alice", ticket=router.authority.ticket("tcp", b"a" * 32, now - 1))
        with caplog.at_level(logging.WARNING, logger="aura-router"):
            claim(router, udp, "alice", ticket=old)
        session = router.sessions.get("alice")
        assert session is not None and session.link is tcp
        assert "older than" in caplog.text
        # A newer handshake over udp moves the peer there, as it should.
        claim(router, udp, "alice", ticket=router.authority.ticket("udp", b"a" * 32, now))
        session = router.sessions.get("alice")
        assert session is not None and session.link is udp

    asyncio.run(scenario())
