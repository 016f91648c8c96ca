"""CPU per tunnel packet of the QUIC library's work in the QUIC carrier, against the WireGuard
core's, for qh3 (what the carriers use) and aioquic (the pure-Python stack they used before).

    python3 -m bench.quic_cost [--packets N]

Every tunnel packet that crosses the QUIC carrier is sealed and opened by WireGuard (the whole
cost of the UDP carrier's Python crypto) and, on top, built and opened as one QUIC packet by
the QUIC library: a QUIC packet is bounded by the path MTU, so it carries one full-sized
WireGuard message. Both are measured here on one core with no sockets, as process CPU time (so
other load on a shared machine inflates them less than wall time would), with full-sized
messages, and the same workload for each library:

- wireguard: `Device.send` and `Device.receive` per packet, in batches of 64;
- build: `send_datagram_frame` per message and `datagrams_to_send`, 16 messages per call,
  plus reading the acknowledgements;
- open: the packets of four such calls fed as one socket burst (qh3: one
  `receive_many_datagrams`, as `QuicLink.receive` does; aioquic: `receive_datagram` each),
  `next_event`, plus building the acknowledgements;
- QuicLink build: the same through `QuicLink.send` (socket hand-off, timer), which shows what
  the carrier's own wiring adds to qh3's.

The ratios are against the WireGuard core measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import aioquic.quic.configuration
import aioquic.quic.connection
import qh3.quic.connection

from aura_common.addresses import Endpoint
from aura_common.config import QuicConfig
from aura_common.pki import ca
from aura_common.quic.datagram import DatagramSocket
from aura_common.quic.link import (
    CONNECTION_ID_LENGTH,
    MAX_MESSAGE,
    QUIC_PACKET_SIZE,
    QuicLink,
    datagram_configuration,
)
from aura_common.wire.framing import ALPN
from bench.core_throughput import connected_pair
from services.quic.carrier import server_configuration

CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 8443)
# What the client's tunnel MTU (1376) becomes once WireGuard has sealed it.
MESSAGE_SIZE = min(MAX_MESSAGE, 1376 + 32)
MESSAGES_PER_CALL = 16
CALLS_PER_BURST = 4


def qh3_pair(folder: Path) -> tuple[Any, Any]:
    """A client and a server connection with the carriers' configuration."""
    client_configuration = datagram_configuration(is_client=True, idle_timeout=60,
                                                  server_name="aura")
    client_configuration.verify_mode = ssl.CERT_NONE
    client = qh3.quic.connection.QuicConnection(configuration=client_configuration)
    server = qh3.quic.connection.QuicConnection(
        configuration=server_configuration(QuicConfig(), str(folder / "tls.crt"),
                                           str(folder / "tls.key")),
        original_destination_connection_id=client.original_destination_connection_id)
    return client, server


def aioquic_pair(folder: Path) -> tuple[Any, Any]:
    """The same with aioquic, configured as the carriers configured it."""
    def configuration(is_client: bool) -> aioquic.quic.configuration.QuicConfiguration:
        return aioquic.quic.configuration.QuicConfiguration(
            is_client=is_client, alpn_protocols=[ALPN], connection_id_length=CONNECTION_ID_LENGTH,
            idle_timeout=60, max_datagram_frame_size=65535, max_datagram_size=QUIC_PACKET_SIZE,
            server_name="aura" if is_client else None)
    client_configuration = configuration(True)
    client_configuration.verify_mode = ssl.CERT_NONE
    server_configuration = configuration(False)
    server_configuration.load_cert_chain(str(folder / "tls.crt"), str(folder / "tls.key"))
    client = aioquic.quic.connection.QuicConnection(configuration=client_configuration)
    server = aioquic.quic.connection.QuicConnection(
        configuration=server_configuration,
        original_destination_connection_id=client.original_destination_connection_id)
    return client, server


def connected(pair: Callable[[Path], tuple[Any, Any]], folder: Path) -> tuple[Any, Any, float]:
    """`pair`'s connections, handshake done."""
    folder.mkdir()
    ca.create_ca(folder)
    ca.issue_tls_certificate(ca.load_ca_private_key(folder), ["127.0.0.1"], folder)
    client, server = pair(folder)
    now = 0.0
    client.connect(SERVER, now=now)
    for _ in range(6):
        now += 0.001
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT, now=now)
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER, now=now)
        while client.next_event() or server.next_event():
            pass
    return client, server, now


def drain(connection: Any) -> None:
    while connection.next_event() is not None:
        pass


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, work: Callable[[], object]) -> None:
        start = time.process_time()
        work()
        self.seconds += time.process_time() - start


def measure_wireguard(packets: int) -> tuple[float, float]:
    client, server, to_server = connected_pair()
    packet = struct.pack("!BBH", 0x45, 0, MESSAGE_SIZE - 32) + bytes(MESSAGE_SIZE - 36)
    seal, unseal = Timer(), Timer()
    sealed: list[bytes] = []
    for _ in range(packets // 64):
        seal(lambda: sealed.extend(d for e in client.send(to_server, [packet] * 64, 1.0)
                                   for d in getattr(e, "datagrams", ())))
        unseal(lambda: server.receive(sealed, CLIENT, 1.0))
        sealed.clear()
    return seal.seconds, unseal.seconds


def measure_library(pair: Callable[[Path], tuple[Any, Any]], packets_wanted: int, folder: Path
                    ) -> tuple[float, float, int]:
    client, server, now = connected(pair, folder)
    message = bytes(MESSAGE_SIZE)
    build, unseal = Timer(), Timer()
    built: list[tuple[bytes, Endpoint]] = []
    acks: list[tuple[bytes, Endpoint]] = []
    sent = received = 0
    many = getattr(server, "receive_many_datagrams", None)

    def send_call() -> None:
        for _ in range(MESSAGES_PER_CALL):
            client.send_datagram_frame(message)
        built.extend(client.datagrams_to_send(now=now))

    def open_burst() -> None:
        nonlocal received
        if many is not None:
            many([data for data, _ in built], CLIENT, now)
        else:
            for data, _ in built:
                server.receive_datagram(data, CLIENT, now=now)
        while server.next_event() is not None:
            received += 1
        acks.extend(server.datagrams_to_send(now=now))

    def read_acks() -> None:
        for data, _ in acks:
            client.receive_datagram(data, SERVER, now=now)
        drain(client)

    while sent < packets_wanted:
        for _ in range(CALLS_PER_BURST):  # a burst as one socket read would bring it
            build(send_call)
            now += 0.0002
        now += 0.001  # past the ack delay: the server acknowledges the burst
        unseal(open_burst)
        build(read_acks)
        sent += len(built)
        built.clear()
        acks.clear()
    if received < sent:
        raise SystemExit(f"{pair.__name__}: {sent - received} of {sent} packets not opened")
    return build.seconds, unseal.seconds, sent


class CountingSocket:
    """Stands in for the DatagramSocket under a QuicLink: takes the packets, counts sends."""

    def __init__(self) -> None:
        self.sends = 0
        self.packets: list[bytes] = []

    def send(self, datagrams: Sequence[bytes], destination: Endpoint,
             source: str | None = None) -> None:
        self.sends += 1
        self.packets.extend(datagrams)


async def measure_link(packets: int, folder: Path) -> tuple[float, int, int]:
    client, server, _ = connected(qh3_pair, folder)
    sock = CountingSocket()
    link = QuicLink(client, cast(DatagramSocket, sock), lambda _link: None)
    build = Timer()
    message = bytes(MESSAGE_SIZE)
    loop = asyncio.get_running_loop()
    acks: list[tuple[bytes, Endpoint]] = []

    def read_acks() -> None:
        for data, _ in acks:
            client.receive_datagram(data, SERVER, now=loop.time())
        drain(client)

    burst = MESSAGES_PER_CALL * CALLS_PER_BURST
    while len(sock.packets) < packets:
        build(lambda: link.send([message] * burst))
        server.receive_many_datagrams(sock.packets[-burst:], CLIENT, loop.time())
        drain(server)
        acks[:] = server.datagrams_to_send(now=loop.time() + 0.002)
        build(read_acks)
        await asyncio.sleep(0.001)  # as between TUN reads
    link.stop()
    return build.seconds, len(sock.packets), sock.sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    args = parser.parse_args()
    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory(prefix="aura-quic-cost-") as tmp:
        seal, unseal = measure_wireguard(args.packets)
        rows.append(("wireguard seal + open (reference)", seal + unseal, args.packets))
        for name, pair in (("qh3", qh3_pair), ("aioquic", aioquic_pair)):
            build, opened, sent = measure_library(pair, args.packets, Path(tmp) / name)
            rows += [(f"{name} build (+ reading acks)", build, sent),
                     (f"{name} open (+ building acks)", opened, sent),
                     (f"{name} build + open", build + opened, sent)]
        link_build, link_sent, sends = asyncio.run(measure_link(args.packets,
                                                                Path(tmp) / "link"))
        rows.append(("QuicLink build (+ reading acks)", link_build, link_sent))
    wireguard = rows[0][1] / rows[0][2] * 1e6
    print(f"{MESSAGE_SIZE}-byte messages, CPU time per tunnel packet:")
    for label, seconds, count in rows:
        per_packet = seconds / count * 1e6
        print(f"  {label:<36} {per_packet:6.1f} us   x{per_packet / wireguard:.1f}")
    print(f"  QuicLink: {link_sent / sends:.1f} packets per socket send")


if __name__ == "__main__":
    main()
