"""aura-tcp: WireGuard inside TLS 1.3 (ALPN aura/1); everything else goes to the fallback chain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Sequence

from aura_common import runtime, systemd
from aura_common.config import ServerConfig
from aura_common.fallback import FallbackChain
from aura_common.keys import load_server_private_key
from aura_common.ports import bind_with_scan
from aura_common.service import run_service
from aura_common.transport import SessionHub, format_endpoint
from services.tcp.carrier import TcpCarrier, server_tls_context

log = logging.getLogger("aura-tcp")


def open_socket(config: ServerConfig) -> tuple[socket.socket, bool]:
    """The socket systemd passed us, or one we bind ourselves, scanning for a free port."""
    activated = systemd.listen_fds().get("tcp")
    if activated:
        return activated[0], True
    settings = config.transports.tcp
    return bind_with_scan(settings.listen, settings.port, socket.SOCK_STREAM), False


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    settings = config.transports.tcp
    if not settings.enabled:
        log.info("the tcp transport is disabled in %s", config.path)
        runtime.forget(config.runtime_file, "tcp")
        systemd.ready("disabled")
        return
    tls = server_tls_context(config.tls_cert_file, config.tls_key_file)
    sock, activated = open_socket(config)
    sock.setblocking(False)
    address = format_endpoint(sock.getsockname()[:2])
    hub = SessionHub("tcp", load_server_private_key(config), config.router_socket,
                     mtu=config.tun.mtu)
    carrier = TcpCarrier(hub, settings, tls, FallbackChain.from_config(settings))
    server = await asyncio.start_server(carrier.accept, sock=sock)
    runtime.record_bound(config.runtime_file, "tcp", [address], activated)
    fallback = ", ".join(h.name for h in carrier.fallback.handlers)
    log.info("listening on tcp %s%s; fallback: %s", address,
             " (socket activation)" if activated else "", fallback)
    systemd.ready(f"listening on tcp {address}")
    try:
        await hub.run()
    finally:
        server.close()
        runtime.forget(config.runtime_file, "tcp")


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-tcp", "Aura WireGuard transport over TLS 1.3.", serve, argv)
