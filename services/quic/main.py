"""aura-quic: WireGuard messages in QUIC DATAGRAM frames (ALPN aura/1)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

from aura_common.config import ServerConfig
from aura_common.service.shell import run_service
from aura_common.state import runtime
from aura_common.transport.hub import disabled, listening_socket, new_hub, serve_sessions
from services.quic.carrier import QuicCarrier, server_configuration


def ports_of_udp_transport(config: ServerConfig) -> set[int]:
    """The UDP transport's port (bound, or configured if it has not bound yet): never ours."""
    ports = set()
    if config.transports.udp.enabled:
        ports.add(config.transports.udp.port)
    entry = runtime.read_runtime_for_service(config.transports_dir).get("udp")
    return ports | runtime.ports_of(entry["bound"] if entry else ())


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    if disabled(config, "quic"):
        return
    settings = config.transports.quic
    configuration = server_configuration(settings, config.tls_cert_file, config.tls_key_file)
    sock, activated = listening_socket(config, "quic", socket.SOCK_DGRAM,
                                       skip=frozenset(ports_of_udp_transport(config)))
    hub = new_hub(config, "quic")
    carrier = QuicCarrier(hub, sock, configuration=configuration,
                          settings=settings)
    try:
        await serve_sessions(config, hub, sock, activated)
    finally:
        carrier.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-quic", "Aura WireGuard transport over QUIC.", serve, argv)
