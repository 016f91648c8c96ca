"""The real Router without its process: its config with peers registered, a router on a fresh
authority, a transport link that keeps what the router sent it, a transport's `session_up`
after a handshake, and IPv4 packets as transports hand them over."""

from __future__ import annotations

import ipaddress
import struct
import time
from pathlib import Path
from typing import Any

from aura_common.config import ServerConfig
from aura_common.ipc import Credentials
from aura_common.ipc.frames import Frame, Packets, Peers, SessionUp
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wireguard import HandshakeAuthority, generate_private_key
from services.router.main import Router


def ipv4(src: str, dst: str, payload: bytes = b"x" * 20) -> bytes:
    """An IPv4/UDP packet (checksum not set: the router reads only addresses and length)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header + payload


def router_config(tmp_path: Path, *peers: RegisteredPeer) -> ServerConfig:
    """A server config keeping its state, runtime files and keys in `tmp_path`, with `peers`
    in its registry."""
    config = ServerConfig.default("vpn.example", state_dir=str(tmp_path),
                                  runtime_dir=str(tmp_path), key_dir=str(tmp_path))
    if peers:
        with Registry.edit(config.peers_file) as registry:
            for peer in peers:
                registry.add(peer)
    return config


def new_router(config: ServerConfig) -> Router:
    return Router(config, HandshakeAuthority(generate_private_key()))


def claim(router: Router, link: Any, peer: str, endpoint: str = "192.0.2.1:5",
          handshake_at: float = 1.0, ticket: bytes | None = None) -> None:
    """`session_up` as a transport sends it after a handshake the router answered for it."""
    if ticket is None:
        registered = router.registry.get(peer)
        assert registered is not None
        ticket = router.authority.ticket(router.transports[link], registered.public_key,
                                         time.time())
    router._session_up(link, SessionUp(peer, endpoint, handshake_at, ticket))


class FakeTransport:
    """The router's view of a transport connection (its process `pid`): what it was sent."""

    role = "udp"

    def __init__(self, pid: int = 4242) -> None:
        self.peer_credentials = Credentials(pid, 900 + pid, 900)
        self.frames: list[Frame] = []
        self.unread = 0  # bytes sent that the transport has not read

    def unread_by_peer(self) -> int:
        return self.unread

    async def send_reliable(self, frame: Frame) -> None:
        self.frames.append(frame)

    def post(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_packets(self, batches: list[tuple[str, list[bytes]]]) -> None:
        self.frames.append(Packets(0.0, batches))

    def peers_listed(self) -> list[str]:
        """The peers of the last `peers` frame."""
        peers = [f for f in self.frames if isinstance(f, Peers)][-1].peers
        return [p.name for p in peers]
