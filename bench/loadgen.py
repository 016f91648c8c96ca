"""Many WireGuard peers in one process: the load generator behind `bench.scale`.

    python3 -m bench.loadgen PEERS.json RESULT.json [--rate 10] [--seconds 20]

PEERS.json: `{"server": [host, port], "server_public_key": hex, "target": ip, "peers":
[{"private_key": hex, "preshared_key": hex, "address": ip}, ...]}`. Each peer is the project's
own WireGuard core (`aura_common.wireguard.Device`) on its own UDP socket, all in one asyncio
loop. Phases, each bounded in time and rate:

1. connect: every peer handshakes, at most CONNECT_RATE initiations per second;
2. steady: every peer sends `--rate` ICMP echo requests per second to `target` for
   `--seconds`; replies are counted per peer;
3. ramp: one second of re-handshakes at a rate, doubling from RAMP_START until cookie replies
   appear or an initiation goes unanswered for a second (the server is under load) or
   RAMP_MAX is passed, then RAMP_REFINE more seconds halving the interval between the
   highest rate the server kept up with and the lowest it did not (`RampSearch`), so the
   knee is known within 1/2**RAMP_REFINE of that interval.

Once connected it writes RESULT.connected and idles `--hold` seconds before the steady phase.
RESULT.json gets the figures (times, counts); `bench.scale` turns them into ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from aura_common.wireguard import Device, HandshakeCompleted, Peer, Received, Transmit
from aura_lab.icmp import ECHO_REPLY, echo_request

CONNECT_RATE = 200  # initiations/s while connecting: below the knee, so all peers get in
RAMP_START, RAMP_MAX = 50.0, 6400.0
RAMP_REFINE = 4  # bisections after the first step the server fell behind: 800 to 1,600/s by 50/s
# After a step, its peers' handshakes that went unanswered are retransmitted (5 s later):
# the next step starts once every one of them completed (or after RAMP_SETTLE), and then
# later than the server stays under load after its backlog (one second).
RAMP_SETTLE = 8.0
RAMP_REST = 1.5
COOKIE_REPLY = bytes([3])
# The peers' timers (retransmits, keepalives) are checked this often: they are whole seconds.
TICK = 1.0
SEND_SLOT = 0.01  # echo requests go out in slots of this many seconds


def echo_reply_ident(packet: bytes) -> int | None:
    """The identifier of an IPv4 ICMP echo reply, or None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + 8 or packet[start] != ECHO_REPLY:
        return None
    return int(struct.unpack_from("!H", packet, start + 4)[0])


class RampSearch:
    """The handshake rates to offer, one step at a time: doubling from `start` while the server
    keeps up (every initiation answered, no cookie reply), then bisecting between the highest
    rate it kept up with and the lowest it did not. I/O-free: `rate` is the next step's rate
    (None when done), `record` its outcome."""

    def __init__(self, start: float = RAMP_START, ceiling: float = RAMP_MAX,
                 refine: int = RAMP_REFINE) -> None:
        self.kept_up: float | None = None  # the highest rate offered that the server kept up with
        self.behind: float | None = None  # the lowest rate offered that it did not
        self._next: float | None = start
        self._ceiling = ceiling
        self._refine = refine

    @property
    def rate(self) -> float | None:
        return self._next

    def record(self, offered: float, behind: bool) -> None:
        """The step at `rate` offered `offered`/s (the sender may fall short of it)."""
        if behind:
            self.behind = offered if self.behind is None else min(self.behind, offered)
        else:
            self.kept_up = offered if self.kept_up is None else max(self.kept_up, offered)
        rate = self._next
        assert rate is not None
        if self.behind is None:
            self._next = rate * 2 if rate * 2 <= self._ceiling else None
        elif self.kept_up is None or self._refine == 0:
            self._next = None  # behind from the first step: nothing below it was tried
        else:
            self._refine -= 1
            self._next = (self.kept_up + self.behind) / 2


@dataclass
class Initiator:
    index: int
    address: str
    device: Device
    peer: Peer
    sock: socket.socket
    echo: bytes = b""  # the echo request this peer sends, built once
    handshakes: int = 0
    replies: int = 0


@dataclass
class Generator:
    target: str
    initiators: list[Initiator] = field(default_factory=list)
    cookie_replies: int = 0
    handshake_times: list[float] = field(default_factory=list)

    def readable(self, initiator: Initiator) -> None:
        # One datagram per wakeup: a peer gets about one reply at a time, and the selector
        # (level-triggered) reports the socket again if more wait, so no second receive
        # call is spent to learn that the socket is empty.
        try:
            datagram = initiator.sock.recv(65535)
        except (BlockingIOError, ConnectionError):
            return
        if datagram[:1] == COOKIE_REPLY:
            self.cookie_replies += 1
        server = initiator.peer.endpoint
        assert server is not None
        self.handle(initiator, initiator.device.receive((datagram,), server, time.monotonic()))

    def handle(self, initiator: Initiator, events: list) -> None:
        for event in events:
            if type(event) is Transmit:
                for datagram in event.datagrams:
                    try:
                        initiator.sock.send(datagram)
                    except OSError:  # a full buffer drops, as a network would
                        continue
            elif type(event) is Received:
                initiator.replies += sum(1 for p in event.packets
                                         if echo_reply_ident(p) == initiator.index)
            elif type(event) is HandshakeCompleted:
                initiator.handshakes += 1
                self.handshake_times.append(time.monotonic())

    async def tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            for initiator in self.initiators:
                self.handle(initiator, initiator.device.tick(now))

    async def handshake_at(self, rate: float, initiators: list[Initiator]) -> float:
        """Initiate one handshake per initiator at `rate`/s; returns when the last was sent."""
        start = time.monotonic()
        for i, initiator in enumerate(initiators):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.handle(initiator, initiator.device.initiate(initiator.peer, time.monotonic()))
        return time.monotonic() - start

    async def connect(self) -> dict[str, float]:
        start = time.monotonic()
        await self.handshake_at(CONNECT_RATE, self.initiators)
        deadline = start + len(self.initiators) / CONNECT_RATE + 30
        while time.monotonic() < deadline and not all(i.handshakes for i in self.initiators):
            await asyncio.sleep(0.1)
        connected = sum(1 for i in self.initiators if i.handshakes)
        return {"peers": len(self.initiators), "connected": connected,
                "seconds": time.monotonic() - start, "cookie_replies": self.cookie_replies}

    async def ramp(self) -> list[dict[str, float]]:
        steps = []
        search = RampSearch()
        while (rate := search.rate) is not None:
            count = min(len(self.initiators), round(rate))  # one second's worth
            batch = self.initiators[:count]
            before = {id(i): i.handshakes for i in batch}
            cookies_before, done_before = self.cookie_replies, len(self.handshake_times)
            start = time.monotonic()
            sent_in = await self.handshake_at(rate, batch)
            await asyncio.sleep(1.0)  # answers still on the way
            completed = [t for t in self.handshake_times[done_before:] if t >= start]
            cookies = self.cookie_replies - cookies_before
            offered = count / max(sent_in, 1e-3)
            steps.append({
                "offered_per_s": offered,
                "completed": sum(1 for i in batch if i.handshakes > before[id(i)]),
                "completed_per_s": len(completed) / max(max(completed, default=start) - start,
                                                        sent_in, 1e-3),
                "initiations": count,
                "cookie_replies": cookies,
            })
            search.record(offered, cookies > 0 or steps[-1]["completed"] < count)
            settled = time.monotonic() + RAMP_SETTLE
            while (time.monotonic() < settled
                   and any(i.handshakes == before[id(i)] for i in batch)):
                await asyncio.sleep(0.1)
            await asyncio.sleep(RAMP_REST)
        return steps

    async def steady(self, rate: float, seconds: float) -> dict[str, float]:
        for initiator in self.initiators:
            initiator.replies = 0
        slots_per_second = round(1 / SEND_SLOT)
        per_slot_cycle = len(self.initiators) * rate / slots_per_second
        sent, carry = 0, 0.0
        for initiator in self.initiators:
            initiator.echo = echo_request(initiator.address, self.target, initiator.index, 1)
        start, cpu_start = time.monotonic(), time.process_time()
        cursor = 0
        slot = 0
        while time.monotonic() - start < seconds:
            slot += 1
            carry += per_slot_cycle
            now = time.monotonic()
            while carry >= 1:
                carry -= 1
                initiator = self.initiators[cursor]
                cursor = (cursor + 1) % len(self.initiators)
                self.handle(initiator, initiator.device.send(initiator.peer, [initiator.echo],
                                                             now))
                sent += 1
            # Always yield: the replies must be read even when sending runs late.
            await asyncio.sleep(max(start + slot * SEND_SLOT - time.monotonic(), 0))
        elapsed = time.monotonic() - start
        cpu = time.process_time() - cpu_start  # this process's user + system time
        await asyncio.sleep(2.0)  # the last replies
        received = sum(i.replies for i in self.initiators)
        # The monotonic clock is the machine's, so the bench can tell what overlapped.
        return {"sent": sent, "received": received, "seconds": elapsed, "cpu_seconds": cpu,
                "started_at": start, "ended_at": start + elapsed,
                "offered_per_s": sent / elapsed,
                "peers_without_reply": sum(1 for i in self.initiators if not i.replies)}


async def main_async(peers_file: Path, result_file: Path, rate: float, seconds: float,
                     hold: float) -> dict[str, object]:
    spec = json.loads(peers_file.read_text())
    server = (spec["server"][0], int(spec["server"][1]))
    server_public = bytes.fromhex(spec["server_public_key"])
    generator = Generator(spec["target"])
    loop = asyncio.get_running_loop()
    for index, entry in enumerate(spec["peers"]):
        device = Device(bytes.fromhex(entry["private_key"]))
        psk = entry.get("preshared_key")
        peer = device.add_peer(server_public, endpoint=server,
                               preshared_key=bytes.fromhex(psk) if psk else None)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        sock.connect(server)
        initiator = Initiator(index + 1, entry["address"], device, peer, sock)
        generator.initiators.append(initiator)
        loop.add_reader(sock.fileno(), generator.readable, initiator)
    ticker = loop.create_task(generator.tick_forever())
    try:
        connect = await generator.connect()
        # Tell the orchestrator every session is up; it measures the idle server meanwhile.
        result_file.with_suffix(".connected").write_text(json.dumps(connect))
        await asyncio.sleep(hold)
        steady = await generator.steady(rate, seconds)
        ramp = await generator.ramp()
    finally:
        ticker.cancel()
        for initiator in generator.initiators:
            loop.remove_reader(initiator.sock.fileno())
            initiator.sock.close()
    return {"connect": connect, "steady": steady, "ramp": ramp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("peers", type=Path)
    parser.add_argument("result", type=Path)
    parser.add_argument("--rate", type=float, default=10, help="echo requests/s per peer")
    parser.add_argument("--seconds", type=float, default=20, help="steady phase length")
    parser.add_argument("--hold", type=float, default=5,
                        help="idle seconds between connecting and the steady phase")
    args = parser.parse_args()
    result = asyncio.run(main_async(args.peers, args.result, args.rate, args.seconds,
                                    args.hold))
    args.result.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
