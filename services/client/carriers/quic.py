"""The QUIC carrier: WireGuard messages in DATAGRAM frames over aioquic, ALPN aura/1.

The server certificate is checked against the Aura CA key from the config once the QUIC
handshake completes. A PING every second, each expected to be acknowledged within a few
seconds, tells a broken path from a quiet one; an ICMP error (nothing listens on the port any
more) or the server closing the connection is reported at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Sequence
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, QuicEvent

from aura_common.config import ClientConfig
from services.client.carriers import Deliver
from services.client.carriers.tcp import verify_server_certificate
from services.quic.carrier import datagram_configuration, queue_datagrams

PING_INTERVAL = 1.0
PING_DEADLINE = 4.0
IDLE_TIMEOUT = 15.0


class _Protocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, carrier: Carrier) -> None:
        super().__init__(quic)
        self.carrier = carrier
        self._batch: list[bytes] = []

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        if self._batch:
            batch, self._batch = self._batch, []
            self.carrier.deliver(batch)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived):
            self._batch.append(event.data)
        elif isinstance(event, ConnectionTerminated):
            reason = event.reason_phrase or f"error code {event.error_code:#x}"
            self.carrier.broken(f"QUIC connection closed: {reason}")

    def error_received(self, exc: Exception) -> None:
        hint = (" (ICMP port unreachable: nothing listens on the server's QUIC port)"
                if isinstance(exc, ConnectionRefusedError) else "")
        self.carrier.broken(f"QUIC path failed: {exc}{hint}")


class Carrier:
    name = "quic"

    def __init__(self, config: ClientConfig) -> None:
        self.server_name = config.server_name
        self.ca_public_key = config.server.ca_public_key
        self.deliver: Deliver = lambda datagrams: None
        self.dropped = 0
        self._protocol: _Protocol | None = None
        self._transport: asyncio.DatagramTransport | None = None
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
        configuration = datagram_configuration(
            is_client=True, idle_timeout=IDLE_TIMEOUT, server_name=self.server_name)
        configuration.verify_mode = ssl.CERT_NONE  # checked below against the pinned CA key
        quic = QuicConnection(configuration=configuration)
        self._transport, self._protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(quic, self), sock=sock)
        try:
            self._protocol.connect(sock.getpeername())
            await self._protocol.wait_connected()
            # aioquic keeps the peer's certificate on its TLS context, without a public name.
            certificate = quic.tls._peer_certificate
            if certificate is None:
                raise ConnectionError("the QUIC server sent no certificate")
            verify_server_certificate(certificate, self.ca_public_key)
        except BaseException:
            self._release()
            raise
        self.deliver = deliver
        self._keepalive = loop.create_task(self._ping_forever(self._protocol))

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
        if self._protocol is not None:
            self.dropped += queue_datagrams(self._protocol._quic, datagrams)
            self._protocol.transmit()

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
        if self._keepalive is not None and self._keepalive is not asyncio.current_task():
            self._keepalive.cancel()
        self._keepalive = None
        self._protocol = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
