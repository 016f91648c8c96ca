"""The QUIC carrier: WireGuard messages in DATAGRAM frames over qh3, ALPN aura/1.

The server certificate is checked against the Aura CA key from the config once the QUIC
handshake completes. A PING every second, each expected to be acknowledged within a few
seconds, tells a broken path from a quiet one; an ICMP error (nothing listens on the port any
more) or the server closing the connection is reported at once.

Like the server, the carrier works in bursts: every QUIC packet one socket read returns is
fed to qh3, the WireGuard messages they carried go to the client in one `deliver` call,
and then one `transmit` sends the acknowledgements and whatever the client queued meanwhile.
Once connected, a burst that queued nothing leaves its acknowledgements to ride with the next
message (`QuicLink.acknowledge`).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
import ssl
from collections.abc import Sequence

from cryptography import x509
from qh3.quic.connection import QuicConnection
from qh3.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    HandshakeCompleted,
    PingAcknowledged,
)

from aura_common.config import ClientConfig
from aura_common.quic.datagram import Burst, DatagramSocket
from aura_common.quic.link import (
    DATAGRAM_OVERHEAD,
    QUIC_PACKET_SIZE,
    QuicLink,
    datagram_configuration,
)
from services.client.carriers.base import CarrierLifecycle, Deliver, tunnel_mtu_within
from services.client.carriers.tcp import verify_server_certificate

PING_INTERVAL = 1.0
PING_DEADLINE = 4.0
IDLE_TIMEOUT = 15.0
# 1376: a full-sized tunnel packet, sealed by WireGuard and framed by QUIC, crosses a
# 1500-byte path in one IP packet even under IPv6.
TUNNEL_MTU = tunnel_mtu_within(QUIC_PACKET_SIZE - DATAGRAM_OVERHEAD)


def peer_certificate(quic: QuicConnection) -> x509.Certificate | None:
    """The server's certificate, as the handshake presented it (qh3 has already checked the
    server's proof that it holds the certificate's key)."""
    certificate = quic.get_peercert()
    return None if certificate is None else x509.load_der_x509_certificate(
        certificate.public_bytes())


class Carrier(CarrierLifecycle):
    name = "quic"
    tunnel_mtu: int | None = TUNNEL_MTU

    def __init__(self, config: ClientConfig) -> None:
        super().__init__()
        self.server_name = config.server_name
        self.ca_public_key = config.server.ca_public_key
        self.deliver: Deliver = lambda datagrams: None
        self.dropped = 0
        self._socket: DatagramSocket | None = None
        self._link: QuicLink | None = None
        self._receiving = False
        self._queued = False  # messages were queued while a burst was handled
        self._keepalive: asyncio.Task[None] | None = None
        self._connected: asyncio.Future[None] | None = None
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._ping_ids = itertools.count()

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        loop = asyncio.get_running_loop()
        self._opening()
        self._connected = loop.create_future()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect((host, port))  # connected: the kernel reports ICMP errors to us
        except OSError:
            sock.close()
            raise
        server = sock.getpeername()[:2]  # as the socket reports sources: canonical, 2-tuple
        self._socket = DatagramSocket(sock, self._burst, self._socket_error)
        configuration = datagram_configuration(
            is_client=True, idle_timeout=IDLE_TIMEOUT, server_name=self.server_name)
        configuration.verify_mode = ssl.CERT_NONE  # checked below against the pinned CA key
        quic = QuicConnection(configuration=configuration)
        self._link = link = QuicLink(quic, self._socket, self._timer_events)
        try:
            quic.connect(server, now=loop.time())
            link.transmit()
            await self._connected  # a cancelled open() cancels it too
            certificate = peer_certificate(quic)
            if certificate is None:
                raise ConnectionError("the QUIC server sent no certificate")
            verify_server_certificate(certificate, self.ca_public_key)
        except BaseException:
            self.close()
            raise
        self.deliver = deliver
        self._keepalive = loop.create_task(self._ping_forever())

    def _burst(self, burst: Burst) -> None:
        link = self._link
        if link is None:
            return
        # The burst that completes the QUIC handshake answers at once, as do those before it.
        connected = self._connected is not None and self._connected.done()
        self._receiving, self._queued = True, False
        try:
            for datagrams, source, _local in burst:
                link.receive(datagrams, source)
            self._take_events(link)
        finally:
            self._receiving = False
        if self._link is not link:  # broken meanwhile
            return
        if self._queued or not connected:
            link.transmit()
        else:
            link.acknowledge()

    def _timer_events(self, link: QuicLink) -> None:
        if self._link is link:
            self._take_events(link)

    def _take_events(self, link: QuicLink) -> None:
        batch: list[bytes] = []
        for event in link.events():
            if type(event) is DatagramFrameReceived:
                batch.append(event.data)
            elif isinstance(event, PingAcknowledged):
                waiter = self._pings.pop(event.uid, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif isinstance(event, HandshakeCompleted):
                if self._connected is not None and not self._connected.done():
                    self._connected.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                reason = event.reason_phrase or f"error code {event.error_code:#x}"
                self.broken(f"QUIC connection closed: {reason}")
                return
        if batch:
            self.deliver(batch)

    def _socket_error(self, error: OSError) -> None:
        hint = (" (ICMP port unreachable: nothing listens on the server's QUIC port)"
                if error.errno == errno.ECONNREFUSED else "")
        self.broken(f"QUIC path failed: {error}{hint}")

    async def _ping_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while self._link is not None:
            await asyncio.sleep(PING_INTERVAL)
            link = self._link
            if link is None:
                return
            uid = next(self._ping_ids)
            self._pings[uid] = answered = loop.create_future()
            link.quic.send_ping(uid)
            link.transmit()
            try:
                async with asyncio.timeout(PING_DEADLINE):
                    await answered
            except TimeoutError:
                self.broken(f"no answer from the server for {PING_DEADLINE:.0f} s")
                return
            finally:
                self._pings.pop(uid, None)

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        link = self._link
        if link is not None:
            # while a burst is handled, they leave with its acknowledgements
            self.dropped += link.send(datagrams, now=not self._receiving)
            self._queued = self._queued or self._receiving

    def broken(self, reason: str) -> None:
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(ConnectionError(reason))
        super().broken(reason)

    def close(self) -> None:
        if self._link is not None:
            # tell the server at once instead of letting it idle out
            self._link.quic.close()
            self._link.transmit()
        super().close()

    def _release(self) -> None:
        """Stop everything that could still send: the pings, qh3's timer, the socket."""
        if self._keepalive is not None and self._keepalive is not asyncio.current_task():
            self._keepalive.cancel()
        self._keepalive = None
        for waiter in self._pings.values():
            waiter.cancel()
        self._pings.clear()
        if self._link is not None:
            self._link.stop()
            self._link = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
