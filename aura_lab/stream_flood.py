"""TCP and QUIC floods against an Aura server in a test namespace, bounded in count, rate and
time.

    python3 -m aura_lab.stream_flood KIND --target HOST:PORT [--connections 100]
        [--rate 50] [--seconds 20] [--sources N]

Kinds (each connection holds on until the server closes it or the time is up):
  tcp-dribble      a ClientHello offering aura/1 (padded to `--hello-size` bytes) as 1-byte
                   TLS records, `--records-per-write` in each write, every `--interval` s
  tcp-stall        half a ClientHello, then silence (a handshake stalled half-way)
  tcp-no-finish    a whole ClientHello, then silence (TLS never finishes)
  quic-one-port    QUIC connections from one UDP port, each through Retry to a finished QUIC
                   handshake, then no WireGuard handshake
  quic-many-ports  the same, each from its own UDP port

At most `--connections` are open at a time; a closed one is replaced, at most `--rate` new
ones a second and at most MAX_OPENED in all. With `--sources N` connections take turns among N
source addresses of the attacker namespace (aura_lab.flood.attacker_namespace). Prints one
JSON line: connections opened, closed by the server, failed to open, QUIC handshakes finished,
bytes sent, seconds, and the CPU seconds the flood itself used. Dribbled hellos are written by
one loop, every connection's next piece each `--interval`, and a QUIC connection's task wakes
only for its packets and its timer, so that the generator's own cost (it shares the machine
with the server) stays a fraction of what it makes the server do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from qh3._hazmat import Buffer
from qh3.quic.connection import QuicConnection
from qh3.quic.events import ConnectionTerminated, HandshakeCompleted
from qh3.quic.packet import pull_quic_header

from aura_common.quic.link import CONNECTION_ID_LENGTH, datagram_configuration
from aura_common.wire.framing import ALPN
from aura_lab.flood import source_addresses

KINDS = ("tcp-dribble", "tcp-stall", "tcp-no-finish", "quic-one-port", "quic-many-ports")
MAX_CONNECTIONS = 1000
MAX_RATE = 200.0  # new connections per second
MAX_SECONDS = 60.0
MAX_OPENED = 5000
RECORD_HANDSHAKE = b"\x16\x03\x01"
GREASE_EXTENSION = b"\x0a\x0a"  # RFC 8701: a type no server may act on (OpenSSL pads already)


@dataclass
class Report:
    kind: str
    opened: int = 0
    closed_by_server: int = 0
    failed: int = 0
    handshakes: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


def client_hello(padding_to: int = 0) -> bytes:
    """The handshake message of a real ClientHello offering aura/1 (no record header),
    padded with an extension servers ignore to `padding_to` bytes if that is larger."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    message = outgoing.read()[5:]  # one record: the whole message
    if len(message) + 4 >= padding_to:
        return message
    position = 4 + 2 + 32
    position += 1 + message[position]  # session id
    position += 2 + int.from_bytes(message[position : position + 2], "big")  # suites
    position += 1 + message[position]  # compression methods
    extensions = int.from_bytes(message[position : position + 2], "big")
    pad = padding_to - len(message) - 4
    extensions += 4 + pad
    body = (message[4:position] + extensions.to_bytes(2, "big") + message[position + 2 :]
            + GREASE_EXTENSION + pad.to_bytes(2, "big") + bytes(pad))
    return b"\x01" + len(body).to_bytes(3, "big") + body


def record(fragment: bytes) -> bytes:
    return RECORD_HANDSHAKE + len(fragment).to_bytes(2, "big") + fragment


class Flood:
    def __init__(self, args: argparse.Namespace) -> None:
        host, _, port = args.target.rpartition(":")
        self.target = (host.strip("[]"), int(port))
        self.kind = args.kind
        self.connections = min(args.connections, MAX_CONNECTIONS)
        self.rate = min(args.rate, MAX_RATE)
        self.seconds = min(args.seconds, MAX_SECONDS)
        self.interval = max(args.interval, 0.001)
        family = 6 if ":" in self.target[0] else 4
        self.sources = source_addresses(family, args.sources) if args.sources else [None]
        self.report = Report(self.kind)
        self.hello = client_hello(args.hello_size if self.kind == "tcp-dribble" else 0)
        self.records_per_write = max(1, args.records_per_write)
        self.open = 0
        self.one_port: QuicSocket | None = None
        self.dribbling: dict[asyncio.StreamWriter, int] = {}  # the next offset to send

    def source(self) -> Iterator[str | None]:
        while True:
            yield from self.sources

    async def run(self) -> Report:
        loop = asyncio.get_running_loop()
        started, cpu = loop.time(), time.process_time()
        deadline = started + self.seconds
        tasks: set[asyncio.Task[None]] = set()
        if self.kind == "tcp-dribble":
            ticker = loop.create_task(self.dribble())
            tasks.add(ticker)
        sources = self.source()
        while loop.time() < deadline and self.report.opened + self.report.failed < MAX_OPENED:
            if self.open < self.connections:
                self.open += 1
                task = loop.create_task(self.connection(next(sources), deadline))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / self.rate)
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.one_port is not None:
            self.one_port.close()
        self.report.seconds = round(loop.time() - started, 2)
        self.report.cpu_seconds = round(time.process_time() - cpu, 2)
        return self.report

    async def connection(self, source: str | None, deadline: float) -> None:
        try:
            if self.kind.startswith("tcp"):
                await self.tcp(source, deadline)
            else:
                await self.quic(source, deadline)
        finally:
            self.open -= 1

    # -- TCP --------------------------------------------------------------------------------
    async def tcp(self, source: str | None, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection(
                    *self.target, local_addr=(source, 0) if source else None)
        except (OSError, TimeoutError):
            self.report.failed += 1
            return
        self.report.opened += 1
        try:
            if self.kind == "tcp-dribble":
                self.dribbling[writer] = 0
            else:
                whole = record(self.hello)
                self.send(writer, whole[: len(whole) // 2] if self.kind == "tcp-stall" else whole)
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                while await reader.read(65536):
                    pass
            self.report.closed_by_server += 1
        except ConnectionError:
            self.report.closed_by_server += 1
        except TimeoutError:
            pass
        finally:
            self.dribbling.pop(writer, None)
            writer.transport.abort()

    async def dribble(self) -> None:
        """Every `interval`, the next `records_per_write` 1-byte records to each connection."""
        step = self.records_per_write
        pieces = [b"".join(record(self.hello[i : i + 1])
                           for i in range(offset, min(offset + step, len(self.hello))))
                  for offset in range(0, len(self.hello), step)]
        while True:
            for writer, index in list(self.dribbling.items()):
                if index == len(pieces) or writer.is_closing():
                    del self.dribbling[writer]
                    continue
                if writer.transport.get_write_buffer_size():
                    continue  # the server does not read; wait as `drain` would
                self.send(writer, pieces[index])
                self.dribbling[writer] = index + 1
            await asyncio.sleep(self.interval)

    def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        self.report.bytes_sent += len(data)

    # -- QUIC -------------------------------------------------------------------------------
    async def quic(self, source: str | None, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self.kind == "quic-one-port":
            if self.one_port is None:
                self.one_port = await QuicSocket.open(self, source)
            sock = self.one_port
        else:
            sock = await QuicSocket.open(self, source)
        configuration = datagram_configuration(is_client=True, idle_timeout=MAX_SECONDS)
        configuration.verify_mode = ssl.CERT_NONE
        quic = QuicConnection(configuration=configuration)
        state = _ClientState(loop.create_future(), asyncio.Event())
        sock.add(quic, state)
        quic.connect(self.target, now=loop.time())
        self.report.opened += 1
        try:
            # Awake only when a packet came (it may have moved the timer) or the timer is
            # due, so a connection that holds on costs the generator nothing. Before, each
            # woke every 0.2 s: 200 held were 1,000 wakeups a second, a quarter of the
            # generator's CPU, taken from the machine the measured client shares.
            while not state.ended.done() and loop.time() < deadline:
                sock.flush(quic)
                timer = quic.get_timer()
                until = deadline if timer is None else min(deadline, timer)
                state.received.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, until - loop.time())):
                        await state.received.wait()
                timer = quic.get_timer()
                if timer is not None and timer <= loop.time():
                    quic.handle_timer(now=loop.time())
            if state.ended.done():
                self.report.closed_by_server += 1
        finally:
            sock.remove(quic)
            if sock is not self.one_port:
                sock.close()


@dataclass
class _ClientState:
    ended: asyncio.Future[None]
    received: asyncio.Event  # a packet came since the connection's task last looked


class QuicSocket(asyncio.DatagramProtocol):
    """A UDP socket carrying one or many client QUIC connections, told apart by the
    connection id the server writes to."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood
        self.transport: asyncio.DatagramTransport | None = None
        self.connections: dict[bytes, tuple[QuicConnection, _ClientState]] = {}

    @classmethod
    async def open(cls, flood: Flood, source: str | None) -> QuicSocket:
        loop = asyncio.get_running_loop()
        local = (source or ("::" if ":" in flood.target[0] else "0.0.0.0"), 0)
        _, sock = await loop.create_datagram_endpoint(lambda: cls(flood), local_addr=local)
        return sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def add(self, quic: QuicConnection, state: _ClientState) -> None:
        self.connections[quic.host_cid] = (quic, state)

    def remove(self, quic: QuicConnection) -> None:
        self.connections.pop(quic.host_cid, None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CONNECTION_ID_LENGTH)
        except ValueError:
            return
        entry = self.connections.get(header.destination_cid)
        if entry is not None:
            entry[0].receive_datagram(data, addr, now=asyncio.get_running_loop().time())
            entry[1].received.set()
            self.flush(entry[0])

    def flush(self, quic: QuicConnection) -> None:
        entry = self.connections.get(quic.host_cid)
        if entry is None or self.transport is None:
            return
        for data, addr in quic.datagrams_to_send(now=asyncio.get_running_loop().time()):
            self.transport.sendto(data, addr)
            self.flood.report.bytes_sent += len(data)
        while (event := quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self.flood.report.handshakes += 1
            elif isinstance(event, ConnectionTerminated) and not entry[1].ended.done():
                entry[1].ended.set_result(None)
                entry[1].received.set()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--connections", type=int, default=100, help="open at a time")
    parser.add_argument("--rate", type=float, default=50.0, help="new connections a second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--interval", type=float, default=0.005,
                        help="seconds between the records of a dribbled ClientHello")
    parser.add_argument("--hello-size", type=int, default=4096,
                        help="bytes a dribbled ClientHello is padded to (at most 65535)")
    parser.add_argument("--records-per-write", type=int, default=1)
    parser.add_argument("--sources", type=int, default=0,
                        help="source addresses to take turns among (0: the namespace's own)")
    args = parser.parse_args()
    started = time.monotonic()
    report = asyncio.run(Flood(args).run())
    assert time.monotonic() - started < MAX_SECONDS + 30
    print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main()
