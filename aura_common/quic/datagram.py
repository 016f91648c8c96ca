"""The UDP socket under aura-quic and the client's QUIC carrier, driven without asyncio's
datagram transport.

asyncio's transport reads one datagram per event-loop turn and cannot see control messages.
This one reads a whole burst per turn (GRO-coalesced where the kernel can), tells for each
datagram the local address it was sent to (IP_PKTINFO / IPV6_PKTINFO), and sends batches with
GSO from a chosen local address, so a server with several addresses answers from the one each
client wrote to: a client's connected socket, a NAT or a firewall drops replies from another.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Sequence

from aura_common.addresses import Endpoint
from aura_common.netio import udp as udp_batch
from aura_common.netio.codel import CoDel

# (datagrams, remote address, local address) for runs of datagrams sharing both addresses.
Burst = list[tuple[list[bytes], Endpoint, "str | None"]]

# recvmsg calls per event-loop turn: with GRO each may return dozens of datagrams.
RECV_CALLS_PER_BURST = 64


class DatagramSocket:
    """A non-blocking UDP socket that hands whole bursts to `on_burst`.

    `on_error` receives errors the kernel queued for the socket (ICMP port unreachable on a
    connected socket); without it they are discarded.
    """

    def __init__(self, sock: socket.socket, on_burst: Callable[[Burst], None],
                 on_error: Callable[[OSError], None] | None = None) -> None:
        sock.setblocking(False)
        udp_batch.enlarge_buffers(sock)
        udp_batch.enable_gro(sock)
        udp_batch.enable_pktinfo(sock)
        udp_batch.enable_timestamps(sock)
        self.aqm = CoDel()  # bounds the time datagrams wait in the socket's large buffer
        self.sock = sock
        self.on_burst = on_burst
        self.on_error = on_error
        self.dropped = 0  # datagrams the kernel did not take (full buffer, no route)
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._readable)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def _readable(self) -> None:
        if self.on_error is not None:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.on_error(OSError(code, os.strerror(code)))  # e.g. ConnectionRefusedError
                if self.closed:
                    return
        burst = udp_batch.recv_batch_with_local(self.sock, RECV_CALLS_PER_BURST,
                                                 aqm=self.aqm)
        if burst:
            self.on_burst(burst)

    def send(self, datagrams: Sequence[bytes], destination: Endpoint,
             source: str | None = None) -> None:
        """Send now, from `source` if given; what the kernel refuses is dropped and counted."""
        if self.closed:
            self.dropped += len(datagrams)
            return
        sent = udp_batch.send_batch(self.sock, datagrams, destination, source)
        self.dropped += len(datagrams) - sent

    def close(self) -> None:
        if not self.closed:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
