"""The UDP carrier: raw WireGuard datagrams over one connected UDP socket, in batches.

A connected socket receives only the server's datagrams, and the kernel reports ICMP errors
for it (port unreachable: the server process is gone), which this carrier turns into a broken
path instead of waiting for the liveness timeout.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Sequence

from aura_common.config import ClientConfig
from aura_common.netio import udp as udp_batch
from aura_common.netio.codel import CoDel
from services.client.carriers.base import CarrierLifecycle, Deliver

RECV_BATCH_LIMIT = 64


class Carrier(CarrierLifecycle):
    name = "udp"
    tunnel_mtu: int | None = None

    def __init__(self, config: ClientConfig) -> None:
        super().__init__()
        self.sock: socket.socket | None = None
        self.destination: tuple[str, int] = ("", 0)
        self._deliver: Deliver = lambda datagrams: None
        self.aqm = CoDel()  # bounds the time datagrams wait in the socket's large buffer

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            # No packet leaves yet; this fails at once only without a route to the server.
            sock.connect((host, port))
        except OSError:
            sock.close()
            raise
        udp_batch.enlarge_buffers(sock)
        udp_batch.enable_gro(sock)
        udp_batch.enable_timestamps(sock)
        self.sock, self.destination, self._deliver = sock, (host, port), deliver
        self._opening()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _failed(self, code: int) -> None:
        """An error the kernel queued for the socket (an ICMP error for an earlier datagram),
        told by the read or send that met it: the path is broken."""
        reason = os.strerror(code)
        if code == errno.ECONNREFUSED:
            host, port = self.destination
            reason += f" (ICMP port unreachable: nothing listens on udp {host}:{port})"
        self.broken(reason)

    def _readable(self) -> None:
        if self.sock is None:
            return
        for datagrams, _source in udp_batch.recv_batch(self.sock, RECV_BATCH_LIMIT, self.aqm,
                                                       on_error=self._failed):
            self._deliver(datagrams)

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        # A full socket buffer drops the datagrams, as a full NIC queue would.
        if self.sock is not None:
            udp_batch.send_batch(self.sock, datagrams, self.destination, on_error=self._failed)

    def _release(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
