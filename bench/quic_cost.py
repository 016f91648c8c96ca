"""CPU per tunnel packet of aioquic's work in the QUIC carrier, against the WireGuard core's.

    python3 -m bench.quic_cost [--packets N]

Every tunnel packet that crosses the QUIC carrier is sealed and opened by WireGuard (the whole
cost of the UDP carrier's Python crypto) and, on top, built and opened as one QUIC packet by
aioquic: a QUIC packet is bounded by the path MTU, so it carries one full-sized WireGuard
message. Both are measured here on one core with no sockets, as process CPU time (so other
load on a shared machine inflates them less than wall time would), with full-sized messages:

- wireguard: `Device.send` and `Device.receive` per packet, in batches of 64;
- aioquic build: `send_datagram_frame` and `datagrams_to_send`, PACER_BURST per call, as
  `QuicLink.transmit` drives it, plus reading the acknowledgements;
- aioquic open: `receive_datagram` and `next_event`, plus building the acknowledgements;
- QuicLink build: the same through `QuicLink.send` (queue, pacer rounds, socket hand-off),
  which shows what the carrier's own wiring adds to aioquic's.

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
from typing import cast

from aioquic.quic.connection import QuicConnection

from aura_common import pki
from aura_common.config import QuicConfig
from aura_common.quic.datagram import Address, DatagramSocket
from aura_common.quic.link import MAX_MESSAGE, PACER_BURST, QuicLink, datagram_configuration
from bench.core_throughput import connected_pair
from services.quic.carrier import server_configuration

CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 8443)
# What the client's tunnel MTU (1376) becomes once WireGuard has sealed it.
MESSAGE_SIZE = min(MAX_MESSAGE, 1376 + 32)


def quic_pair(folder: Path) -> tuple[QuicConnection, QuicConnection, float]:
    """A client and a server connection with the carrier's configuration, handshake done."""
    pki.create_ca(folder)
    pki.issue_tls_certificate(pki.load_ca_private_key(folder), ["127.0.0.1"], folder)
    client_configuration = datagram_configuration(is_client=True, idle_timeout=60,
                                                  server_name="aura")
    client_configuration.verify_mode = ssl.CERT_NONE
    client = QuicConnection(configuration=client_configuration)
    server = QuicConnection(
        configuration=server_configuration(QuicConfig(), str(folder / "tls.crt"),
                                           str(folder / "tls.key")),
        original_destination_connection_id=client.original_destination_connection_id)
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


def drain(connection: QuicConnection) -> None:
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


def measure_aioquic(packets: int, folder: Path) -> tuple[float, float, int]:
    client, server, now = quic_pair(folder)
    message = bytes(MESSAGE_SIZE)
    build, unseal = Timer(), Timer()
    built: list[tuple[bytes, Address]] = []
    sent = 0

    def send_burst() -> None:
        for _ in range(PACER_BURST):
            client.send_datagram_frame(message)
        built.extend(client.datagrams_to_send(now=now))

    def open_all() -> None:
        for data, _ in built:
            server.receive_datagram(data, CLIENT, now=now)
        drain(server)
        acks.extend(server.datagrams_to_send(now=now))

    def read_acks() -> None:
        for data, _ in acks:
            client.receive_datagram(data, SERVER, now=now)
        drain(client)

    acks: list[tuple[bytes, Address]] = []
    while sent < packets:
        for _ in range(4):  # a burst as one socket read would bring it
            build(send_burst)
            now += 0.0002
        now += 0.001  # past aioquic's ack delay: the server acknowledges the burst
        unseal(open_all)
        build(read_acks)
        sent += len(built)
        built.clear()
        acks.clear()
    return build.seconds, unseal.seconds, sent


class CountingSocket:
    """Stands in for the DatagramSocket under a QuicLink: takes the packets, counts sends."""

    def __init__(self) -> None:
        self.sends = 0
        self.packets: list[bytes] = []

    def send(self, datagrams: Sequence[bytes], destination: Address,
             source: str | None = None) -> None:
        self.sends += 1
        self.packets.extend(datagrams)


async def measure_link(packets: int, folder: Path) -> tuple[float, int, int]:
    client, server, _ = quic_pair(folder)
    sock = CountingSocket()
    link = QuicLink(client, cast(DatagramSocket, sock), lambda _link: None)
    build = Timer()
    message = bytes(MESSAGE_SIZE)
    loop = asyncio.get_running_loop()
    acks: list[tuple[bytes, Address]] = []

    def read_acks() -> None:
        for data, _ in acks:
            client.receive_datagram(data, SERVER, now=loop.time())
        drain(client)

    while len(sock.packets) < packets:
        build(lambda: link.send([message] * 128))
        for data in sock.packets[-128:]:
            server.receive_datagram(data, CLIENT, now=loop.time())
        drain(server)
        acks[:] = server.datagrams_to_send(now=loop.time() + 0.002)
        build(read_acks)
        await asyncio.sleep(0.001)  # let aioquic's pacer refill, as between TUN reads
    link.stop()
    return build.seconds, len(sock.packets), sock.sends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aura-quic-cost-") as tmp:
        seal, unseal = measure_wireguard(args.packets)
        wireguard = (seal + unseal) / args.packets * 1e6
        build, opened, sent = measure_aioquic(args.packets, Path(tmp) / "a")
        link_build, link_sent, sends = asyncio.run(measure_link(args.packets, Path(tmp) / "b"))
    rows = [
        ("wireguard seal + open (reference)", seal + unseal, args.packets),
        ("aioquic build (+ reading acks)", build, sent),
        ("aioquic open (+ building acks)", opened, sent),
        ("aioquic build + open", build + opened, sent),
        ("QuicLink build (+ reading acks)", link_build, link_sent),
    ]
    print(f"{MESSAGE_SIZE}-byte messages, CPU time per tunnel packet:")
    for label, seconds, count in rows:
        per_packet = seconds / count * 1e6
        print(f"  {label:<36} {per_packet:6.1f} us   x{per_packet / wireguard:.1f}")
    print(f"  QuicLink: {link_sent / sends:.1f} packets per socket send")


if __name__ == "__main__":
    main()
