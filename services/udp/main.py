"""aura-udp: the WireGuard responder on UDP. Stock WireGuard clients talk to this process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from collections.abc import Sequence

from aura_common import runtime, systemd
from aura_common.config import ServerConfig
from aura_common.keys import load_server_private_key
from aura_common.netio import udp as udp_batch
from aura_common.ports import bind_with_scan
from aura_common.service import run_service
from aura_common.transport import Address, SessionHub, format_endpoint

log = logging.getLogger("aura-udp")

RECV_BATCH_LIMIT = 64
# Remote endpoints whose local address is remembered; the least recently heard go first, so
# a flood of spoofed sources costs bounded memory.
REPLY_ADDRESSES_LIMIT = 4096


class UdpCarrier:
    """Moves WireGuard datagrams between one UDP socket and the session hub, in batches.

    Replies leave from the address the remote last wrote to: on a host with several
    addresses, the kernel's own choice may be another one, which the client drops.
    """

    def __init__(self, sock: socket.socket, hub: SessionHub) -> None:
        self.sock = sock
        self.hub = hub
        hub.carrier = self
        self._reply_from: dict[Address, str] = {}
        udp_batch.enlarge_buffers(sock)
        udp_batch.enable_gro(sock)
        udp_batch.enable_pktinfo(sock)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        reply_from = self._reply_from
        for datagrams, source, local in udp_batch.recv_batch_with_local(self.sock,
                                                                        RECV_BATCH_LIMIT):
            if local is not None:
                reply_from.pop(source, None)  # re-inserted last: dicts keep insertion order
                reply_from[source] = local
                if len(reply_from) > REPLY_ADDRESSES_LIMIT:
                    del reply_from[next(iter(reply_from))]
            self.hub.received(datagrams, source)

    def transmit(self, destination: Address, datagrams: Sequence[bytes]) -> None:
        udp_batch.send_batch(self.sock, datagrams, destination,
                             self._reply_from.get(destination))


def open_socket(config: ServerConfig) -> tuple[socket.socket, bool]:
    """The socket systemd passed us, or one we bind ourselves, scanning for a free port."""
    activated = systemd.listen_fds().get("udp")
    if activated:
        return activated[0], True
    settings = config.transports.udp
    return bind_with_scan(settings.listen, settings.port, socket.SOCK_DGRAM), False


def bound_addresses(sock: socket.socket) -> list[str]:
    host, port = sock.getsockname()[:2]
    return [format_endpoint((host, port))]


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    sock, activated = open_socket(config)
    sock.setblocking(False)
    addresses = bound_addresses(sock)
    runtime.record_bound(config.runtime_file, "udp", addresses, activated)
    hub = SessionHub("udp", load_server_private_key(config), str(config.router_socket),
                     mtu=config.tun.mtu)
    carrier = UdpCarrier(sock, hub)
    carrier.start()
    log.info("listening on udp %s%s", ", ".join(addresses),
             " (socket activation)" if activated else "")
    systemd.ready(f"listening on udp {', '.join(addresses)}")
    try:
        await hub.run()
    finally:
        runtime.forget(config.runtime_file, "udp")


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-udp", "Aura WireGuard transport over UDP.", serve, argv)
