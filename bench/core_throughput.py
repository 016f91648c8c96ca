"""Data-path throughput of the WireGuard core: encrypt + decrypt between two Devices in memory.

    python bench/core_throughput.py [--packets N] [--batch B] [--size BYTES]

Prints packets/s and Gb/s of tunnel payload for each direction and for the round trip, on one
core, with no sockets involved: the ceiling the Python data path sets for any driver.
"""

from __future__ import annotations

import argparse
import struct
import time

from aura_common.wireguard import (
    Device,
    Peer,
    Received,
    Transmit,
    generate_private_key,
    public_key,
)

CLIENT, SERVER = ("192.0.2.1", 40000), ("192.0.2.2", 51820)


def datagrams_of(events: list) -> list[bytes]:
    return [d for e in events if isinstance(e, Transmit) for d in e.datagrams]


def connected_pair() -> tuple[Device, Device, Peer]:
    client_key, server_key = generate_private_key(), generate_private_key()
    client, server = Device(client_key), Device(server_key)
    to_server = client.add_peer(public_key(server_key), endpoint=SERVER)
    server.add_peer(public_key(client_key))
    response = server.receive(datagrams_of(client.initiate(to_server, 0.0)), CLIENT, 0.0)
    confirmation = client.receive(datagrams_of(response), SERVER, 0.0)
    server.receive(datagrams_of(confirmation), CLIENT, 0.0)
    return client, server, to_server


def report(label: str, packets: int, payload: int, seconds: float) -> None:
    gigabits = packets * payload * 8 / seconds / 1e9
    print(f"{label:<10} {packets / seconds:>12,.0f} packets/s {gigabits:>7.2f} Gb/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64, help="packets per send/receive call")
    parser.add_argument("--size", type=int, default=1420, help="IP packet size in bytes")
    args = parser.parse_args()

    client, server, to_server = connected_pair()
    packet = struct.pack("!BBH", 0x45, 0, args.size) + bytes(args.size - 4)
    batch = [packet] * args.batch
    rounds = max(1, args.packets // args.batch)
    total = rounds * args.batch

    # Each batch is decrypted right after it is encrypted and then freed, as a driver would
    # after its send call, so memory is reused rather than growing for the whole run.
    received = 0
    encrypt_time = decrypt_time = 0.0
    clock = time.perf_counter
    for _ in range(rounds):
        started = clock()
        events = client.send(to_server, batch, 1.0)
        sent = clock()
        for event in server.receive(datagrams_of(events), CLIENT, 1.0):
            if isinstance(event, Received):
                received += len(event.packets)
        decrypt_time += clock() - sent
        encrypt_time += sent - started
    assert received == total, f"received {received} of {total}"

    print(f"{total:,} packets of {args.size} bytes, {args.batch} per call")
    report("encrypt", total, args.size, encrypt_time)
    report("decrypt", total, args.size, decrypt_time)
    report("both", total, args.size, encrypt_time + decrypt_time)


if __name__ == "__main__":
    main()
