"""The TLS-over-TCP carrier: TLS 1.3 with ALPN aura/1, WireGuard messages framed inside.

The server certificate must be signed by the Aura CA whose public key the client config
carries; that is checked after the TLS handshake, before any WireGuard message is sent. A
broken path shows up within seconds: TCP keepalives probe an idle connection and
TCP_USER_TIMEOUT bounds how long sent data may stay unacknowledged.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.config import ClientConfig
from aura_common.wire.framing import ALPN, FrameDecoder, encode
from services.client.carriers.base import CarrierLifecycle, Deliver

READ_SIZE = 65536
WRITE_BUFFER_LIMIT = 4 << 20  # beyond this a stalled path drops packets instead of queueing
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 3, 2, 3
USER_TIMEOUT_MS = 10_000


def verify_server_certificate(certificate: x509.Certificate, ca_public_key: bytes) -> None:
    """ConnectionError unless `certificate` is current and signed by the CA key (raw Ed25519)."""
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(ca_public_key).verify(
            certificate.signature, certificate.tbs_certificate_bytes)
    except InvalidSignature:
        raise ConnectionError("the server certificate is not signed by this config's Aura CA "
                              "(wrong server, or someone in between)") from None
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise ConnectionError(
            f"the server certificate is valid only from {certificate.not_valid_before_utc} "
            f"to {certificate.not_valid_after_utc}")


def client_tls_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    # The chain is checked against the pinned CA key after the handshake (ssl cannot pin a
    # bare key); OpenSSL still verifies the server's proof of owning the certificate's key.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


class Carrier(CarrierLifecycle):
    name = "tcp"
    tunnel_mtu: int | None = None

    def __init__(self, config: ClientConfig) -> None:
        super().__init__()
        self.server_name = config.server_name
        self.ca_public_key = config.server.ca_public_key
        self.writer: asyncio.StreamWriter | None = None
        self.dropped = 0
        self._reading: asyncio.Task[None] | None = None

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        self._opening()
        reader, writer = await asyncio.open_connection(
            host, port, ssl=client_tls_context(), server_hostname=self.server_name)
        try:
            tls = writer.get_extra_info("ssl_object")
            if tls.selected_alpn_protocol() != ALPN:
                raise ConnectionError(f"the server at {host}:{port} does not speak {ALPN} "
                                      "(a decoy or another service answered)")
            verify_server_certificate(
                x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)),
                self.ca_public_key)
            _tune(writer.get_extra_info("socket"))
        except BaseException:
            writer.transport.abort()
            raise
        self.writer = writer
        self._reading = asyncio.get_running_loop().create_task(self._read_forever(reader, deliver))

    async def _read_forever(self, reader: asyncio.StreamReader, deliver: Deliver) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    self.broken("the server closed the TLS connection")
                    return
                frames = decoder.feed(data)
                if frames:
                    deliver(frames)
        except (OSError, ssl.SSLError) as error:
            self.broken(f"TLS connection failed: {error.strerror or error}"
                        if isinstance(error, OSError) else f"TLS error: {error}")

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        writer = self.writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.dropped += len(datagrams)
            return
        writer.write(encode(datagrams))

    def _release(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.writer = None
        if self._reading is not None and self._reading is not asyncio.current_task():
            self._reading.cancel()
