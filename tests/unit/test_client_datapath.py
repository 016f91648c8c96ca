"""The client's TUN reads wait in a flow queue; each turn of the event loop seals TURN_BYTES of
it, and a packet of a flow with nothing queued (a ping during an upload) goes first."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

from services.client.datapath import TURN_BYTES, DataPath
from services.client.fakes import MemoryTun
from services.client.path import Path


def packet(sport: int, tag: int, size: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 24 + size, 0, 0, 64, 17, 0,
                         bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return header + struct.pack("!HH", sport, 5201) + tag.to_bytes(4, "big") + bytes(size - 4)


class RecordingPath:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send(self, packets: list[bytes]) -> None:
        self.sent.append(packets)


def test_a_ping_overtakes_the_backlog_of_a_bulk_upload() -> None:
    async def scenario() -> None:
        tun = MemoryTun("aura-test", 1420)
        path = RecordingPath()
        live = cast(Path, path)  # has the one method the data path calls
        datapath = DataPath(tun, lambda: live, lambda message: None, lambda reason: None)
        upload = [packet(40000, i, 1400) for i in range(3 * TURN_BYTES // 2 // 1400)]
        tun.inject(*upload)
        datapath._tun_readable()
        assert len(path.sent) == 1 and 0 < sum(map(len, path.sent[0])) <= TURN_BYTES + 1428
        ping = packet(0, 0, 60)
        tun.inject(ping)
        datapath._tun_readable()
        await asyncio.sleep(0)  # the next turn
        assert path.sent[1][0] == ping
        await asyncio.sleep(0.01)  # the following turns send the rest
        sent: list[Any] = [p for batch in path.sent for p in batch]
        assert sent == [*upload[:len(path.sent[0])], ping, *upload[len(path.sent[0]):]]
        assert datapath.counters["tx_packets"] == len(upload) + 1
        tun.close()

    asyncio.run(scenario())
