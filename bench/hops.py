"""Where an idle ping's round trip through Aura UDP goes: the budget of each hop.

    python3 -m bench.hops [--pings 100]

One lab: an Aura server with the UDP transport and one Aura client. While the client pings
the server's tunnel address every 50 ms, `perf record` takes the scheduler's wakeup and
switch events of the whole machine, and the system calls of the three processes. A ping wakes
five processes in turn (the client, aura-udp, aura-router, aura-udp, the client) and each
hands the packet on by waking the next. For every hop the bench prints how long the woken
process waited for a CPU (wakeup) and how long it then ran until it woke the next one (its
turn: the event loop, the Python code and the kernel's work inside its system calls, up to
the next process's socket). Each turn is split into the time inside system calls (the
kernel's: the network stack up to the next socket is run within the send), the time the
process was switched out, and the rest, which is the process's own code: Python. Medians and
quartiles over the pings, and the system calls of a turn. Needs perf (Debian: linux-perf).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aura_common.roles import Transport
from aura_lab.netns import Lab
from aura_lab.topology import SERVER_TUNNEL_V4, build
from bench.latency import PING_INTERVAL, ping_rtts
from bench.transports import aura_client_on

# The processes a ping passes, in order, between the ping command's two wakeups.
CHAIN = ("client", "udp", "router", "udp", "client")
HOPS = (
    "client: wakeup", "client: TUN read, seal, UDP send",
    "aura-udp: wakeup", "aura-udp: UDP read, open, IPC send",
    "aura-router: wakeup", "aura-router: TUN write, the kernel's reply, TUN read, IPC send",
    "aura-udp: wakeup", "aura-udp: IPC read, seal, UDP send",
    "client: wakeup", "client: UDP read, open, TUN write",
)
# A ping whose next hop does not come within this long is not counted (lost, or the lab was
# busy with something else).
HOP_TIMEOUT = 0.05

_EVENT = re.compile(r"^\s*(?P<comm>.+?)\s+(?P<pid>\d+)\s+\[\d+\]\s+(?P<time>[\d.]+):\s+"
                    r"(?P<kind>sched:sched_waking|sched:sched_switch|raw_syscalls:sys_enter"
                    r"|raw_syscalls:sys_exit):\s+(?P<rest>.*)$")
_WOKEN = re.compile(r"comm=(?P<comm>.+?) pid=(?P<pid>\d+) ")
_NEXT = re.compile(r"next_comm=(?P<comm>.+?) next_pid=(?P<pid>\d+) ")
_PREVIOUS = re.compile(r"prev_pid=(?P<pid>\d+) ")
_SYSCALL = {"raw_syscalls:sys_enter": "enter", "raw_syscalls:sys_exit": "exit"}


@dataclass(frozen=True)
class Event:
    time: float
    # "wake": `pid` wakes `target`; "run": `pid` gets a CPU; "off": `pid` leaves it;
    # "enter", "exit": `pid` enters or leaves a system call
    kind: str
    pid: int
    comm: str
    target: int = 0
    target_comm: str = ""


def parse(script: str) -> list[Event]:
    """The wakeups, switches and system calls in `perf script -F comm,pid,cpu,time,event,trace`
    output."""
    events = []
    for line in script.splitlines():
        match = _EVENT.match(line)
        if match is None:
            continue
        at, pid, comm, kind = float(match["time"]), int(match["pid"]), match["comm"], match["kind"]
        if kind in _SYSCALL:
            events.append(Event(at, _SYSCALL[kind], pid, comm))
        elif kind == "sched:sched_waking":
            woken = _WOKEN.search(match["rest"] + " ")
            if woken:
                events.append(Event(at, "wake", pid, comm, int(woken["pid"]), woken["comm"]))
        else:
            previous = _PREVIOUS.search(match["rest"])
            if previous:
                events.append(Event(at, "off", int(previous["pid"]), comm))
            switched = _NEXT.search(match["rest"] + " ")
            if switched:
                events.append(Event(at, "run", int(switched["pid"]), switched["comm"]))
    return sorted(events, key=lambda e: e.time)


@dataclass(frozen=True)
class Turn:
    """Where one process's turn went: seconds inside system calls (and how many it made),
    seconds switched out; the rest of the turn is its own code."""

    syscall_seconds: float
    syscalls: int
    off_seconds: float


@dataclass(frozen=True)
class Ping:
    hops: list[float]  # seconds of each hop in HOPS
    turns: list[Turn]  # of each process in CHAIN


def hop_times(events: list[Event], pids: dict[str, int]) -> list[list[float]]:
    """For every ping that passed the whole chain: the seconds of each hop in HOPS (the
    wakeup, then the run until the process woke the next one)."""
    return [ping.hops for ping in traced_pings(events, pids)]


def traced_pings(events: list[Event], pids: dict[str, int]) -> list[Ping]:
    """Every ping that passed the whole chain: its hops and where each turn went."""
    chain = [pids[name] for name in CHAIN]
    timelines = {pid: _Timeline(events, pid) for pid in set(chain)}
    found = []
    index = 0
    while index < len(events):
        start = events[index]
        index += 1
        if start.kind == "wake" and start.comm == "ping" and start.target == chain[0]:
            marks = _follow(events, index, start.time, chain)
            if marks is not None:
                hops = [b - a for a, b in itertools.pairwise([start.time, *marks])]
                turns = [timelines[pid].turn(marks[2 * step], marks[2 * step + 1])
                         for step, pid in enumerate(chain)]
                found.append(Ping(hops, turns))
    return found


class _Timeline:
    """One process's system calls and its times off the CPU, as sorted intervals."""

    def __init__(self, events: list[Event], pid: int) -> None:
        self.syscalls = _intervals(events, pid, "enter", "exit")
        self.off = _intervals(events, pid, "off", "run")

    def turn(self, start: float, end: float) -> Turn:
        calls, in_calls = _overlap(self.syscalls, start, end)
        _, off = _overlap(self.off, start, end)
        return Turn(in_calls, calls, off)


def _intervals(events: list[Event], pid: int, opening: str, closing: str
               ) -> list[tuple[float, float]]:
    """(start, end) of each stretch `pid` spent between an `opening` and a `closing` event;
    one left open runs to the end of the record."""
    found: list[tuple[float, float]] = []
    opened: float | None = None
    for event in events:
        if event.pid != pid:
            continue
        if event.kind == opening and opened is None:
            opened = event.time
        elif event.kind == closing and opened is not None:
            found.append((opened, event.time))
            opened = None
    if opened is not None:
        found.append((opened, float("inf")))
    return found


def _overlap(intervals: list[tuple[float, float]], start: float, end: float
             ) -> tuple[int, float]:
    """How many of the sorted `intervals` begin within [start, end] or span its start, and
    their seconds inside it."""
    count, seconds = 0, 0.0
    position = max(0, bisect.bisect_left(intervals, (start,)) - 1)
    for opened, closed in intervals[position:]:
        if opened > end:
            break
        inside = min(closed, end) - max(opened, start)
        if inside > 0 or start <= opened <= end:
            count += 1
            seconds += max(0.0, inside)
    return count, seconds


def _follow(events: list[Event], index: int, since: float, chain: list[int]
            ) -> list[float] | None:
    """The times each process of `chain` got a CPU and woke the next (the last one wakes
    ping), from `events[index:]`; None if the chain breaks off."""
    marks = []
    for step, pid in enumerate(chain):
        ran = _next(events, index, since, _running(pid))
        if ran is None:
            return None
        woken = chain[step + 1] if step + 1 < len(chain) else None
        handed = _next(events, ran + 1, events[ran].time, _waking(pid, woken))
        if handed is None:
            return None
        marks += [events[ran].time, events[handed].time]
        index, since = handed + 1, events[handed].time
    return marks


def _running(pid: int) -> Callable[[Event], bool]:
    def wanted(event: Event) -> bool:
        return event.kind == "run" and event.pid == pid
    return wanted


def _waking(pid: int, woken: int | None) -> Callable[[Event], bool]:
    """`pid` waking `woken`, or the ping command when `woken` is None."""
    def wanted(event: Event) -> bool:
        return event.kind == "wake" and event.pid == pid and (
            event.target == woken if woken is not None else event.target_comm == "ping")
    return wanted


def _next(events: list[Event], start: int, since: float,
          wanted: Callable[[Event], bool]) -> int | None:
    for position in range(start, len(events)):
        event = events[position]
        if event.time - since > HOP_TIMEOUT:
            return None
        if wanted(event):
            return position
    return None


def table(pings: list[Ping], rtts: list[float]) -> str:
    lines = ["| hop | median | quartiles | in system calls | switched out | own code "
             "| system calls |", "|---|---|---|---|---|---|---|"]
    for number, name in enumerate(HOPS):
        column = [ping.hops[number] * 1e6 for ping in pings]
        quartiles = statistics.quantiles(column, n=4)
        row = (f"| {name} | {statistics.median(column):.0f} µs "
               f"| {quartiles[0]:.0f}-{quartiles[2]:.0f} µs |")
        if number % 2:  # a turn
            turns = [(ping.turns[number // 2], ping.hops[number]) for ping in pings]
            calls = statistics.median(t.syscall_seconds for t, _ in turns) * 1e6
            off = statistics.median(t.off_seconds for t, _ in turns) * 1e6
            own = statistics.median(hop - t.syscall_seconds - t.off_seconds
                                    for t, hop in turns) * 1e6
            count = statistics.median(t.syscalls for t, _ in turns)
            row += f" {calls:.0f} µs | {off:.0f} µs | {own:.0f} µs | {count:.0f} |"
        else:
            row += " | | | |"
        lines.append(row)
    total = statistics.median(sum(ping.hops) for ping in pings) * 1e6
    lines.append(f"| all hops (sum per ping) | {total:.0f} µs | | | | | |")
    lines.append(f"\n{len(pings)} pings traced; ping's own median RTT meanwhile "
                 f"{statistics.median(rtts):.2f} ms. A turn's own code is the rest of it: "
                 "the event loop's and the service's Python.")
    return "\n".join(lines)


def run(pings: int) -> str:
    if shutil.which("perf") is None:
        raise SystemExit("bench.hops needs perf (Debian: apt-get install linux-perf)")
    lab = Lab()
    try:
        with tempfile.TemporaryDirectory(prefix="aura-bench-") as tmp:
            folder = Path(tmp)
            server = build(lab, folder)
            server.init(transports=(Transport.UDP,))
            server.start()
            ns = server.add_client_namespace()
            client = aura_client_on(lab, server, ns, Transport.UDP, folder)
            pids = {"client": client.pid, "udp": server.service_pid("udp"),
                    "router": server.service_pid("router")}
            lab.ping(ns, SERVER_TUNNEL_V4)  # warm up
            record = folder / "sched.data"
            seconds = pings * PING_INTERVAL + 2
            # The main threads' system calls only: the whole machine's would swamp the record.
            ours = " || ".join(f"common_pid == {pid}" for pid in pids.values())
            perf = subprocess.Popen(
                ["perf", "record", "-a", "-q", "-e", "sched:sched_switch",
                 "-e", "sched:sched_waking", "-e", "raw_syscalls:sys_enter", "--filter", ours,
                 "-e", "raw_syscalls:sys_exit", "--filter", ours,
                 "-o", str(record), "--", "sleep", str(seconds)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            rtts = ping_rtts(lab, ns, SERVER_TUNNEL_V4, pings)
            perf.wait(timeout=seconds + 30)
            script = subprocess.run(
                ["perf", "script", "-i", str(record), "-F", "comm,pid,cpu,time,event,trace"],
                capture_output=True, text=True, check=True).stdout
            lab.stop(client)
    finally:
        lab.close()
    traced = traced_pings(parse(script), pids)
    if not traced:
        raise SystemExit("no ping was traced through the whole chain")
    return table(traced, rtts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pings", type=int, default=100, help="pings traced (default 100)")
    print(run(parser.parse_args().pings))


if __name__ == "__main__":
    main()
