"""The router's time share between its data path and handshake work (timeshare.py)."""

from __future__ import annotations

import math

import pytest

from services.router.timeshare import TimeShare

SHARE, BURST, RECENT = 0.1, 0.002, 0.02


def greedy_work(share: TimeShare, seconds: float, turn: float, step: float = 0.0005,
                data: bool = True) -> float:
    """Handshake work taking every `turn` seconds it is allowed (one turn at least, as the
    router does) for `seconds` of a clock advancing `step` between turns while data moves;
    returns the work done."""
    now, done = 100.0, 0.0
    while now < 100.0 + seconds:
        if data:
            share.data_moved(now)
        if share.allowance(now) > 0:
            now += turn
            done += turn
            share.spent(turn, now)
        now += step
    return done


def test_while_data_moves_handshake_work_gets_its_share_of_the_time() -> None:
    work = greedy_work(TimeShare(SHARE, BURST, RECENT), 10.0, turn=0.0005)
    assert SHARE * 10 * 0.9 <= work <= SHARE * 10 + BURST + 0.0005


def test_a_turn_that_overruns_leaves_a_debt_paid_in_time() -> None:
    share = TimeShare(SHARE, BURST, RECENT)
    share.data_moved(0.0)
    assert share.allowance(0.0) == pytest.approx(BURST)
    share.spent(0.012, 0.012)  # one slow turn, 10 ms past what was saved
    share.data_moved(0.012)
    assert share.allowance(0.012) < 0
    assert share.wait(0.012) == pytest.approx(0.010 / SHARE)  # the bucket was full already
    later = 0.012 + share.wait(0.012) + 0.001
    share.data_moved(later)
    assert share.allowance(later) > 0
    # Whatever the turns cost, the long run stays at the share.
    assert greedy_work(TimeShare(SHARE, BURST, RECENT), 10.0, turn=0.01) <= SHARE * 10 + 0.02


def test_with_no_data_moving_handshakes_may_take_all_the_time() -> None:
    share = TimeShare(SHARE, BURST, RECENT)
    assert share.allowance(5.0) == math.inf
    assert greedy_work(share, 1.0, turn=0.0005, step=0.0, data=False) == pytest.approx(1.0)
    # Work done while no data waited is not owed later: data starts, the burst is there.
    share.data_moved(200.0)
    assert share.allowance(200.0) == pytest.approx(BURST)


def test_the_share_ends_when_data_stops() -> None:
    share = TimeShare(SHARE, BURST, RECENT)
    share.data_moved(1.0)
    share.spent(0.05, 1.0)
    assert share.allowance(1.0 + RECENT / 2) < 0
    assert share.allowance(1.0 + RECENT) == math.inf
