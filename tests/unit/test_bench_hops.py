"""bench.hops reads the scheduler's events of a ping's round trip into the budget of each hop."""

from __future__ import annotations

import pytest

from bench import hops

PIDS = {"client": 11, "udp": 22, "router": 33}
PING = 99


def waking(at: float, comm: str, pid: int, target_comm: str, target: int) -> str:
    return (f"{comm:>16} {pid:5d} [000] {at:.6f}: sched:sched_waking: comm={target_comm} "
            f"pid={target} prio=120 target_cpu=001")


def switch(at: float, pid: int, comm: str = "python3") -> str:
    return (f"         swapper     0 [001] {at:.6f}: sched:sched_switch: prev_comm=swapper/1 "
            f"prev_pid=0 prev_prio=120 prev_state=R ==> next_comm={comm} next_pid={pid} "
            f"next_prio=120")


def round_trip(start: float, hop_seconds: list[float], skip: str | None = None) -> list[str]:
    """The events of one ping through the chain, each hop taking its time in `hop_seconds`;
    `skip` leaves out the process of that name getting a CPU (the chain breaks there)."""
    lines = [waking(start, "ping", PING, "python3", PIDS["client"])]
    at = start
    chain = [PIDS[name] for name in hops.CHAIN]
    for step, pid in enumerate(chain):
        at += hop_seconds[2 * step]
        if hops.CHAIN[step] != skip:
            lines.append(switch(at, pid))
        at += hop_seconds[2 * step + 1]
        if step + 1 < len(chain):
            lines.append(waking(at, "python3", pid, "python3", chain[step + 1]))
        else:
            lines.append(waking(at, "python3", pid, "ping", PING))
    return lines


def test_each_hop_of_a_round_trip_is_its_wakeup_then_its_run() -> None:
    budget = [20e-6, 300e-6, 30e-6, 250e-6, 50e-6, 350e-6, 40e-6, 260e-6, 80e-6, 200e-6]
    noise = [waking(9.5, "postgres", 7, "python3", 8), switch(9.6, 8)]
    events = hops.parse("\n".join(noise + round_trip(10.0, budget) + round_trip(10.05, budget)))
    traced = hops.hop_times(events, PIDS)
    assert len(traced) == 2
    for ping in traced:
        assert ping == pytest.approx(budget, abs=1e-7)
    assert len(hops.HOPS) == len(budget)


def test_a_ping_whose_chain_breaks_off_is_not_counted() -> None:
    budget = [20e-6] * 10
    lines = round_trip(10.0, budget, skip="router") + round_trip(10.05, budget)
    traced = hops.hop_times(hops.parse("\n".join(lines)), PIDS)
    assert len(traced) == 1


def test_a_hop_slower_than_the_timeout_drops_that_ping() -> None:
    budget = [20e-6] * 10
    budget[5] = hops.HOP_TIMEOUT * 2
    assert hops.hop_times(hops.parse("\n".join(round_trip(10.0, budget))), PIDS) == []


def syscall(at: float, pid: int, entering: bool) -> str:
    event = "raw_syscalls:sys_enter: NR 46 (7, 0, 0, 0, 0, 0)" if entering else \
        "raw_syscalls:sys_exit: NR 46 = 0"
    return f"         python3 {pid:5d} [000] {at:.6f}: {event}"


def switched_out(at: float, pid: int) -> str:
    return (f"         python3 {pid:5d} [000] {at:.6f}: sched:sched_switch: prev_comm=python3 "
            f"prev_pid={pid} prev_prio=120 prev_state=R ==> next_comm=postgres next_pid=7 "
            f"next_prio=120")


def test_a_turn_splits_into_system_calls_time_switched_out_and_its_own_code() -> None:
    budget = [20e-6, 300e-6, 30e-6, 250e-6, 50e-6, 350e-6, 40e-6, 260e-6, 80e-6, 200e-6]
    lines = round_trip(10.0, budget)
    router, runs_at = PIDS["router"], 10.0 + sum(budget[:5])  # the router's turn starts
    lines += [
        syscall(runs_at - 100e-6, router, True), syscall(runs_at + 10e-6, router, False),
        syscall(runs_at + 50e-6, router, True), syscall(runs_at + 90e-6, router, False),
        switched_out(runs_at + 100e-6, router), switch(runs_at + 160e-6, router),
        syscall(runs_at + 300e-6, router, True),  # the send that wakes aura-udp (at 350)
        syscall(runs_at + 400e-6, PIDS["udp"], True),  # another process's
    ]
    [ping] = hops.traced_pings(hops.parse("\n".join(sorted(lines, key=_time))), PIDS)
    assert ping.hops == pytest.approx(budget, abs=1e-7)
    turn = ping.turns[hops.CHAIN.index("router")]
    assert turn.syscalls == 3  # the one it woke in, one whole, and the send
    assert turn.syscall_seconds == pytest.approx(10e-6 + 40e-6 + 50e-6, abs=1e-7)
    assert turn.off_seconds == pytest.approx(60e-6, abs=1e-7)
    assert ping.turns[0] == hops.Turn(0.0, 0, 0.0)  # no events: all its own code


def _time(line: str) -> float:
    return float(line.split("]", 1)[1].split(":", 1)[0])
