"""aura-quic: WireGuard messages in QUIC DATAGRAM frames (ALPN aura/1)."""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence

from aura_common import runtime, systemd
from aura_common.config import ServerConfig, parse_host_port
from aura_common.keys import load_server_private_key
from aura_common.ports import bind_with_scan
from aura_common.service import run_service
from aura_common.transport import SessionHub, format_endpoint
from services.quic.carrier import QuicCarrier, server_configuration

log = logging.getLogger("aura-quic")


def ports_of_udp_transport(config: ServerConfig) -> set[int]:
    """The UDP transport's port (bound, or configured if it has not bound yet): never ours."""
    ports = set()
    if config.transports.udp.enabled:
        ports.add(config.transports.udp.port)
    entry = runtime.read_runtime(config.runtime_file)["transports"].get("udp")
    for address in entry["bound"] if entry else ():
        ports.add(parse_host_port(address)[1])
    return ports


def open_socket(config: ServerConfig) -> tuple[socket.socket, bool]:
    """The socket systemd passed us, or one we bind ourselves, scanning for a free port."""
    activated = systemd.listen_fds().get("quic")
    if activated:
        return activated[0], True
    settings = config.transports.quic
    return bind_with_scan(settings.listen, settings.port, socket.SOCK_DGRAM,
                          skip=ports_of_udp_transport(config)), False


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    settings = config.transports.quic
    if not settings.enabled:
        log.info("the quic transport is disabled in %s", config.path)
        runtime.forget(config.runtime_file, "quic")
        systemd.ready("disabled")
        return
    configuration = server_configuration(settings, config.tls_cert_file, config.tls_key_file)
    sock, activated = open_socket(config)
    address = format_endpoint(sock.getsockname()[:2])
    hub = SessionHub("quic", load_server_private_key(config), config.router_socket,
                     mtu=config.tun.mtu)
    carrier = QuicCarrier(hub, sock, configuration=configuration,
                          max_connections=settings.max_connections)
    runtime.record_bound(config.runtime_file, "quic", [address], activated)
    log.info("listening on quic %s%s", address, " (socket activation)" if activated else "")
    systemd.ready(f"listening on quic {address}")
    try:
        await hub.run()
    finally:
        carrier.close()
        runtime.forget(config.runtime_file, "quic")


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-quic", "Aura WireGuard transport over QUIC.", serve, argv)
