"""The TLS-over-TCP carrier: accepts connections, sorts Aura from everything else, and moves
framed WireGuard messages between TLS streams and the session hub.

A connection first reads the ClientHello in the clear. Not TLS, or TLS without ALPN `aura/1`:
the flow goes to the fallback chain with the bytes read so far. Otherwise TLS runs over memory
BIOs (so the bytes already read feed the handshake), then every read is decrypted, cut into
frames, and all complete frames go to the hub in one call.

Unauthenticated connections are "pending": bounded in number (the oldest is closed to admit a
new one), in number per source address (the oldest of that address is closed), in time
(`handshake_timeout` from accept), in bytes (MAX_UNAUTHENTICATED_BYTES read, the ClientHello
within MAX_CLIENT_HELLO in at most MAX_RECORDS records) and in reads
(MAX_UNAUTHENTICATED_READS, so a client that trickles tiny TLS records after its handshake
wakes the event loop a bounded number of times). While the ClientHello is read, the
socket wakes the event loop only once the bytes that could complete it are there
(SO_RCVLOWAT), so the wakeups a client can cause before its verdict grow with the logarithm of
the hello's size, however it trickles its bytes. A connection leaves the pending state only
when a WireGuard handshake with a known peer completes over it; an answer from the hub (a
cookie reply, a handshake response) proves nothing about the client.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
from collections.abc import Sequence

from aura_common.addresses import Endpoint, unmapped
from aura_common.config import TcpConfig
from aura_common.errors import ConfigError
from aura_common.service.log import RateLimitedLog, fields
from aura_common.transport.hub import SessionHub, format_endpoint
from aura_common.wire.framing import ALPN, FrameDecoder, encode
from services.tcp.clienthello import ClientHello, ClientHelloReader
from services.tcp.fallback import FallbackChain, Flow

log = logging.getLogger("aura-tcp")

READ_SIZE = 65536
# A peer that stops reading gets its packets dropped past this, as a full NIC queue would.
WRITE_BUFFER_LIMIT = 4 << 20
WIREGUARD_TYPES = frozenset((1, 2, 3, 4))
# What a client may send before its WireGuard handshake completes: a ClientHello, the rest of
# TLS and a few initiations take 3 to 8 KiB; the slack covers retries and certificates.
MAX_UNAUTHENTICATED_BYTES = 64 << 10
# Reads (so wakeups of the event loop) before that handshake, the ClientHello's included: a
# client takes 3 or 4. Without it a client that finished TLS could send ~3,000 of the
# smallest TLS records within the bytes above, each costing a wakeup and a TLS read.
MAX_UNAUTHENTICATED_READS = 64


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    context.num_tickets = 0  # no resumption: each connection is one long-lived tunnel
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as error:
        raise ConfigError(error.filename, "", "the TLS certificate and key "
                          "(`aura server init` creates them)") from None
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(cert_file, "", f"a PEM certificate matching {key_file}",
                          str(error)) from None
    return context


def is_wireguard_message(frame: bytes) -> bool:
    return len(frame) >= 4 and frame[0] in WIREGUARD_TYPES and frame[1:4] == b"\0\0\0"


def remote_address(writer: asyncio.StreamWriter) -> Endpoint:
    """The peer's (host, port), IPv4-mapped IPv6 shown as plain IPv4."""
    host, port = writer.get_extra_info("peername")[:2]
    return unmapped(host), port


class _Closed(Exception):
    """The connection ended; the message says why."""


class _Connection:
    __slots__ = ("authenticated", "decoder", "endpoint", "incoming", "outgoing", "reader",
                 "reads", "received", "source", "tls", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.source = remote_address(writer)
        self.endpoint = format_endpoint(self.source)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None
        self.decoder = FrameDecoder()
        self.authenticated = False
        self.received = self.reads = 0  # bytes and reads while unauthenticated

    def wake_after(self, count: int) -> None:
        """Let the socket wake the event loop only once `count` bytes wait in it (or it ends)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.fileno() >= 0:  # not yet closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, count)

    def flush(self) -> None:
        if self.outgoing.pending:
            self.writer.write(self.outgoing.read())

    async def read(self) -> bytes:
        data = await self.reader.read(READ_SIZE)
        if not data:
            raise _Closed("closed by the client")
        if not self.authenticated:
            self.received += len(data)
            self.reads += 1
            if self.received > MAX_UNAUTHENTICATED_BYTES:
                raise _Closed(f"{self.received} bytes without a WireGuard handshake")
            if self.reads > MAX_UNAUTHENTICATED_READS:
                raise _Closed(f"{self.reads} reads without a WireGuard handshake")
        return data


class TcpCarrier:
    def __init__(self, hub: SessionHub, settings: TcpConfig, tls_context: ssl.SSLContext,
                 fallback: FallbackChain) -> None:
        self.hub, self.settings = hub, settings
        self.tls_context, self.fallback = tls_context, fallback
        hub.carrier = self
        hub.on_authenticated = self._authenticated
        self._pending: dict[_Connection, None] = {}  # ordered: the oldest first
        self._pending_by_host: dict[str, dict[_Connection, None]] = {}  # the same, per address
        self._live: dict[Endpoint, _Connection] = {}
        self.dropped = 0
        self._log = RateLimitedLog(log)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self._live)

    # -- accepting ----------------------------------------------------------------------
    async def serve(self, sock: socket.socket) -> asyncio.Server:
        """Accept connections on the listening `sock`. The kernel hands over a connection
        only once it has sent something (TCP_DEFER_ACCEPT, for up to `handshake_timeout`):
        one that connects and says nothing costs no task, timer or pending slot here."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT,
                        math.ceil(self.settings.handshake_timeout))
        return await asyncio.start_server(self.accept, sock=sock)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """The `asyncio.start_server` callback: one connection, start to end."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(reader, writer)
        self._admit(conn)
        deadline = asyncio.get_running_loop().call_later(
            self.settings.handshake_timeout, self._expire, conn)
        try:
            if await self._sort(conn):
                await self._tls_handshake(conn)
                self._live[conn.source] = conn
                await self._carry(conn)
        except _Closed as reason:
            self._note(conn, logging.DEBUG, "%s: %s", conn.endpoint, reason)
        except (ssl.SSLError, ConnectionError) as error:
            self._note(conn, logging.INFO, "%s: connection failed: %s", conn.endpoint, error)
        except TimeoutError:
            self._note(conn, logging.DEBUG, "%s: idle for %.0f s; closed", conn.endpoint,
                       self.settings.idle_timeout)
        finally:
            deadline.cancel()
            self._leave_pending(conn)
            if self._live.get(conn.source) is conn:
                del self._live[conn.source]
                self.hub.endpoint_closed(conn.source)
            writer.transport.abort()

    def _note(self, conn: _Connection, level: int, message: str, *args: object) -> None:
        self._log.log(conn.source[0], level, message, *args,
                      extra=fields(transport="tcp", endpoint=conn.endpoint))

    def _admit(self, conn: _Connection) -> None:
        """Make room for one more pending connection: the oldest of its address, or of all."""
        same_host = self._pending_by_host.setdefault(conn.source[0], {})
        limit = self.settings.max_pending_per_source
        while len(same_host) >= limit:
            self._evict(next(iter(same_host)), f"{limit} connections pending from this address")
        while len(self._pending) >= self.settings.max_pending:
            self._evict(next(iter(self._pending)),
                        f"{self.settings.max_pending} connections pending")
        self._pending[conn] = None
        same_host[conn] = None

    def _evict(self, conn: _Connection, why: str) -> None:
        self._leave_pending(conn)
        self._note(conn, logging.INFO, "%s: %s; closing the oldest", conn.endpoint, why)
        conn.writer.transport.abort()

    def _leave_pending(self, conn: _Connection) -> None:
        if conn in self._pending:
            del self._pending[conn]
            same_host = self._pending_by_host[conn.source[0]]
            del same_host[conn]
            if not same_host:
                del self._pending_by_host[conn.source[0]]

    def _expire(self, conn: _Connection) -> None:
        if conn in self._pending:
            self._leave_pending(conn)
            self._note(conn, logging.INFO, "%s: no handshake within %.0f s; closed",
                       conn.endpoint, self.settings.handshake_timeout)
            conn.writer.transport.abort()

    def _authenticated(self, source: Endpoint) -> None:
        """The hub completed a WireGuard handshake with a known peer over `source`."""
        conn = self._live.get(source)
        if conn is not None:
            conn.authenticated = True
            self._leave_pending(conn)

    async def _sort(self, conn: _Connection) -> bool:
        """Read the ClientHello: True for Aura; otherwise hand the flow to the fallback chain."""
        hello = ClientHelloReader()
        verdict = hello.feed(await conn.read())
        if verdict is None:
            try:
                while verdict is None:
                    conn.wake_after(hello.wanted)
                    verdict = hello.feed(await conn.read())
            finally:
                conn.wake_after(1)
        data = hello.received
        if isinstance(verdict, ClientHello) and ALPN.encode() in verdict.alpn:
            conn.incoming.write(data)
            return True
        if isinstance(verdict, ClientHello):
            offers = b", ".join(verdict.alpn).decode("ascii", "replace") or "none"
            reason = f"TLS with ALPN {offers}"
        else:
            reason = verdict.reason
        self._leave_pending(conn)
        await self.fallback.handle(Flow(conn.reader, conn.writer, data, conn.endpoint, reason))
        raise _Closed(f"fallback done ({reason})")

    async def _tls_handshake(self, conn: _Connection) -> None:
        tls = self.tls_context.wrap_bio(conn.incoming, conn.outgoing, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                conn.flush()
                conn.incoming.write(await conn.read())
            except ssl.SSLError:
                conn.flush()  # let the client see the alert
                raise
        conn.flush()
        conn.tls = tls

    # -- carrying -------------------------------------------------------------------------
    async def _carry(self, conn: _Connection) -> None:
        tls = conn.tls
        assert tls is not None
        idle = self.settings.idle_timeout
        while True:  # the handshake's last read may already hold application data
            plain = []
            while True:
                try:
                    plain.append(tls.read(READ_SIZE))
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    raise _Closed("TLS closed by the client") from None
            conn.flush()
            frames = conn.decoder.feed(b"".join(plain)) if plain else None
            if frames:
                for frame in frames:
                    if not is_wireguard_message(frame):
                        log.info("%s: not a WireGuard message after the TLS handshake; closed",
                                 conn.endpoint,
                                 extra=fields(transport="tcp", endpoint=conn.endpoint))
                        raise _Closed("garbage")
                self.hub.received(frames, conn.source)
            async with asyncio.timeout(idle):
                conn.incoming.write(await conn.read())

    def transmit(self, destination: Endpoint, datagrams: Sequence[bytes]) -> None:
        conn = self._live.get(destination)
        if conn is None or conn.tls is None or conn.writer.is_closing():
            return
        if conn.writer.transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.dropped += len(datagrams)
            return
        conn.tls.write(encode(datagrams))
        conn.flush()
