"""What the carrier tests share: a CA, a TLS certificate and WireGuard keys on disk (`keys`,
once per module), the server's hub answering handshakes itself, a WireGuard initiator
driving any client carrier, and a QUIC server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from ipaddress import ip_interface
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.config import ClientConfig, ClientInterface, ClientServer, QuicConfig
from aura_common.pki import ca
from aura_common.transport.hub import SessionHub
from aura_common.wireguard import Device, HandshakeCompleted, Transmit, generate_private_key
from aura_common.wireguard import public_key as wg_public_key
from services.client.carriers.tcp import Carrier as TcpClient
from services.quic.carrier import QuicCarrier, server_configuration


@dataclass
class Keys:
    directory: Path
    ca_public: bytes
    server_private: bytes
    client_private: bytes

    def client_config(self, *, ca_public: bytes | None = None) -> ClientConfig:
        return ClientConfig(
            name="alice",
            interface=ClientInterface(self.client_private, (ip_interface("10.77.0.2/32"),)),
            server=ClientServer(wg_public_key(self.server_private), "127.0.0.1",
                                ca_public or self.ca_public),
        )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    public = ca.create_ca(directory)
    ca.issue_tls_certificate(ca.load_ca_private_key(directory), ["127.0.0.1"], directory)
    return Keys(directory, raw_key(public), generate_private_key(), generate_private_key())


def raw_key(public: ed25519.Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def new_hub(keys: Keys) -> SessionHub:
    # The server's own device answers here (no router): the carrier is what is tested.
    hub = SessionHub("tcp", Device(keys.server_private, mtu=1420), "/nonexistent/router.sock")
    hub.device.add_peer(wg_public_key(keys.client_private))
    return hub


class Initiator:
    """The client side of WireGuard, driving any client carrier."""

    def __init__(self, keys: Keys) -> None:
        self.device = Device(keys.client_private, mtu=1420)
        self.peer = self.device.add_peer(wg_public_key(keys.server_private),
                                         endpoint=("127.0.0.1", 1))
        self.completed = asyncio.Event()
        self.carrier: TcpClient | None = None

    def deliver(self, datagrams: list[bytes]) -> None:
        self.handle(self.device.receive(datagrams, ("127.0.0.1", 1), time.monotonic()))

    def handle(self, events: list) -> None:
        for event in events:
            if isinstance(event, Transmit) and self.carrier is not None:
                self.carrier.transmit(event.datagrams)
            elif isinstance(event, HandshakeCompleted):
                self.completed.set()

    async def handshake(self, carrier) -> None:
        self.carrier = carrier
        self.handle(self.device.initiate(self.peer, time.monotonic()))
        async with asyncio.timeout(5):
            await self.completed.wait()
        # the first data message confirms the session on the responder
        self.handle(self.device.send(self.peer, [ipv4_packet()], time.monotonic()))


def ipv4_packet(payload: bytes = b"ping") -> bytes:
    """A minimal IPv4 packet (protocol 253, reserved for experiments)."""
    total = 20 + len(payload)
    header = bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, 253, 0, 0])
    return header + bytes([10, 77, 0, 2, 10, 77, 0, 1]) + payload


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def quic_server(keys: Keys, settings: QuicConfig, listen: str = "127.0.0.1"
                      ) -> AsyncIterator[tuple[QuicCarrier, int]]:
    configuration = server_configuration(settings, str(keys.directory / "tls.crt"),
                                         str(keys.directory / "tls.key"))
    sock = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET, socket.SOCK_DGRAM)
    if ":" in listen:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((listen, 0))
    carrier = QuicCarrier(new_hub(keys), sock, configuration=configuration,
                          settings=settings)
    try:
        yield carrier, sock.getsockname()[1]
    finally:
        carrier.close()
