"""The QUIC carrier: WireGuard messages in DATAGRAM frames over aioquic, ALPN aura/1.

The server certificate is checked against the Aura CA key from the config once the QUIC
handshake completes. A PING every second, each expected to be acknowledged within a few
seconds, tells a broken path from a quiet one; an ICMP error (nothing listens on the port any
more) or the server closing the connection is reported at once.

Like the server, the carrier works in bursts: every QUIC packet one socket read returns is
fed to aioquic, the WireGuard messages they carried go to the client in one `deliver` call,
and then one `transmit` sends the acknowledgements and whatever the client queued meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Sequence

from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, QuicEvent

from aura_common.config import ClientConfig
from services.client.carriers import Deliver, tunnel_mtu_within
from services.client.carriers.tcp import verify_server_certificate
from services.quic.carrier import (
    DATAGRAM_OVERHEAD,
    QUIC_PACKET_SIZE,
    BatchedProtocol,
    datagram_configuration,
    queue_datagrams,
)
from services.quic.datagram import Burst, DatagramSocket

PING_INTERVAL = 1.0
PING_DEADLINE = 4.0
IDLE_TIMEOUT = 15.0
# 1376: a full-sized tunnel packet, sealed by WireGuard and framed by QUIC, crosses a
# 1500-byte path in one IP packet even under IPv6.
TUNNEL_MTU = tunnel_mtu_within(QUIC_PACKET_SIZE - DATAGRAM_OVERHEAD)


class _Protocol(BatchedProtocol):
    def __init__(self, quic: QuicConnection, sock: DatagramSocket, carrier: Carrier) -> None:
        super().__init__(quic, sock)
        self.carrier = carrier
        self.batch: list[bytes] = []

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self.batch.append(event.data)
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error code {event.error_code:#x}"
            self.carrier.broken(f"QUIC connection closed: {reason}")


class Carrier:
    name = "quic"
    tunnel_mtu: int | None = TUNNEL_MTU

    def __init__(self, config: ClientConfig) -> None:
        self.server_name = config.server_name
        self.ca_public_key = config.server.ca_public_key
        self.deliver: Deliver = lambda datagrams: None
        self.dropped = 0
        self._socket: DatagramSocket | None = None
        self._protocol: _Protocol | None = None
        self._receiving = False
        self._keepalive: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[str] | None = None

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
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
        self._protocol = protocol = _Protocol(quic, self._socket, self)
        try:
            protocol.connect(server)
            await protocol.wait_connected()
            # aioquic keeps the peer's certificate on its TLS context, without a public name.
            certificate = quic.tls._peer_certificate
            if certificate is None:
                raise ConnectionError("the QUIC server sent no certificate")
            verify_server_certificate(certificate, self.ca_public_key)
        except BaseException:
            self.close()
            raise
        self.deliver = deliver
        self._keepalive = loop.create_task(self._ping_forever(protocol))

    def _burst(self, burst: Burst) -> None:
        protocol = self._protocol
        if protocol is None:
            return
        self._receiving = True
        try:
            for datagrams, source, _local in burst:
                for data in datagrams:
                    protocol.datagram_received(data, source)
            if protocol.batch:
                batch, protocol.batch = protocol.batch, []
                self.deliver(batch)
        finally:
            self._receiving = False
        if self._protocol is protocol:  # not broken meanwhile
            protocol.transmit()

    def _socket_error(self, error: OSError) -> None:
        hint = (" (ICMP port unreachable: nothing listens on the server's QUIC port)"
                if error.errno == errno.ECONNREFUSED else "")
        self.broken(f"QUIC path failed: {error}{hint}")

    async def _ping_forever(self, protocol: _Protocol) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            try:
                async with asyncio.timeout(PING_DEADLINE):
                    await protocol.ping()
            except TimeoutError:
                self.broken(f"no answer from the server for {PING_DEADLINE:.0f} s")
                return
            except ConnectionError:
                return  # terminated: reported by the protocol

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        protocol = self._protocol
        if protocol is not None:
            self.dropped += queue_datagrams(protocol._quic, datagrams)
            if not self._receiving:  # else sent at the end of the burst
                protocol.transmit()

    async def wait_closed(self) -> str:
        assert self._closed is not None, "open() first"
        return await asyncio.shield(self._closed)

    def broken(self, reason: str) -> None:
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(reason)
        self._release()

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()  # tell the server at once instead of letting it idle out
        self.broken("closed by the client")

    def _release(self) -> None:
        """Stop everything that could still send: the pings, aioquic's timer, the socket."""
        if self._keepalive is not None and self._keepalive is not asyncio.current_task():
            self._keepalive.cancel()
        self._keepalive = None
        if self._protocol is not None:
            self._protocol.stop_timers()
            self._protocol = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
