"""`bench.scale`'s CPU accounting between two samples of the processes' clock ticks."""

from __future__ import annotations

import os

import pytest

from bench.scale import Cores, cpu_used


def test_cpu_used_counts_only_the_time_between_the_samples() -> None:
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = {"10": (500, 100), "11": (40, 4)}
    # 10 used 30 + 5 ticks, 11 exited (its time cannot be known), 12 started meanwhile.
    after = {"10": (530, 105), "12": (7, 2)}
    used = cpu_used(before, after, 2.0)
    assert (used.user, used.system) == pytest.approx(((30 + 7) * tick / 2, (5 + 2) * tick / 2))
    assert cpu_used(before, {}, 2.0) == Cores(0, 0)
