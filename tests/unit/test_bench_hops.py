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
