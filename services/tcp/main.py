"""aura-tcp: WireGuard inside TLS 1.3 (ALPN aura/1); everything else goes to the fallback chain."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Sequence

from aura_common.config import ServerConfig
from aura_common.service.shell import run_service
from aura_common.transport.hub import disabled, listening_socket, new_hub, serve_sessions
from services.tcp.carrier import TcpCarrier, server_tls_context
from services.tcp.fallback import FallbackChain


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    if disabled(config, "tcp"):
        return
    settings = config.transports.tcp
    tls = server_tls_context(config.tls_cert_file, config.tls_key_file)
    sock, activated = listening_socket(config, "tcp", socket.SOCK_STREAM)
    hub = new_hub(config, "tcp")
    carrier = TcpCarrier(hub, settings, tls, FallbackChain.from_config(settings))
    server = await carrier.serve(sock)
    fallback = ", ".join(h.name for h in carrier.fallback.handlers)
    try:
        await serve_sessions(config, hub, sock, activated, f"fallback: {fallback}")
    finally:
        server.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-tcp", "Aura WireGuard transport over TLS 1.3.", serve, argv)
