"""WireGuard cores wired to each other in memory, for the core's tests and the router's: a
client and a server (`Pair`), or a client, a keyless transport device and the authority
(`Relayed`); and what to pick out of the events they return."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from aura_common.wireguard import (
    Answer,
    Device,
    Dropped,
    Event,
    HandshakeAuthority,
    HandshakeCompleted,
    HandshakeRequested,
    Peer,
    Transmit,
    generate_private_key,
    public_key,
)

CLIENT_ADDR = ("192.0.2.10", 40000)
SERVER_ADDR = ("198.51.100.1", 51820)


def ipv4_packet(payload: bytes = b"hello", total: int | None = None) -> bytes:
    """A minimal IPv4 packet; only the version and total-length fields matter to the core."""
    length = 20 + len(payload)
    return struct.pack("!BBH", 0x45, 0, total or length) + bytes(16) + payload


def ipv6_packet(payload: bytes = b"hello6") -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), 17, 64) + bytes(32) + payload


def transmits(events: list[Event]) -> list[bytes]:
    return [d for e in events if isinstance(e, Transmit) for d in e.datagrams]


def of_type(events: list[Event], kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def drop_reasons(events: list[Event]) -> list[str]:
    return [e.reason for e in events if isinstance(e, Dropped)]


class Pair:
    """A client core (initiator, knows the server's address) and a server core."""

    def __init__(self, psk: bytes | None = None, *, client_psk: bytes | None = None,
                 under_load_after: int = 128, keepalive: float | None = None,
                 server_rng: Callable[[int], bytes] = os.urandom) -> None:
        self.client_key, self.server_key = generate_private_key(), generate_private_key()
        self.client = Device(self.client_key)
        self.server = Device(self.server_key, under_load_after=under_load_after, rng=server_rng)
        self.to_server: Peer = self.client.add_peer(
            public_key(self.server_key), preshared_key=client_psk or psk, endpoint=SERVER_ADDR,
            keepalive=keepalive,
        )
        self.to_client: Peer = self.server.add_peer(public_key(self.client_key), preshared_key=psk)

    def at_server(self, events: list[Event], now: float, source: tuple[str, int] = CLIENT_ADDR,
                  ) -> list[Event]:
        return self.server.receive(transmits(events), source, now)

    def at_client(self, events: list[Event], now: float) -> list[Event]:
        return self.client.receive(transmits(events), SERVER_ADDR, now)

    def connect(self, now: float = 0.0) -> None:
        response = self.at_server(self.client.initiate(self.to_server, now), now)
        confirmation = self.at_client(response, now)
        assert of_type(confirmation, HandshakeCompleted)
        assert of_type(self.at_server(confirmation, now), HandshakeCompleted)


WALL = 1_800_000_000.0


class Relayed:
    """A client, a server transport's device without the static key, and the authority."""

    def __init__(self, psk: bytes | None = None, under_load_after: int = 128) -> None:
        self.server_key, self.client_key = generate_private_key(), generate_private_key()
        self.authority = HandshakeAuthority(self.server_key)
        self.authority.add_peer(public_key(self.client_key), psk)
        self.relay = Device(public_key=public_key(self.server_key),
                            under_load_after=under_load_after)
        self.to_client = self.relay.add_peer(public_key(self.client_key))
        self.client = Device(self.client_key)
        self.to_server = self.client.add_peer(public_key(self.server_key), preshared_key=psk,
                                              endpoint=SERVER_ADDR)

    def requests(self, now: float) -> list[HandshakeRequested]:
        events = self.relay.receive(transmits(self.client.initiate(self.to_server, now)),
                                    CLIENT_ADDR, now)
        assert not transmits(events)  # nothing goes back before the authority answered
        return of_type(events, HandshakeRequested)

    def answer(self, request: HandshakeRequested, now: float, carrier: str = "udp") -> Answer:
        return self.authority.answer(request.initiation, request.local_index, carrier, now, WALL)
