"""`bench.scale`'s CPU accounting between two samples of the processes' clock ticks."""

from __future__ import annotations

import os

from bench.scale import cpu_used


def test_cpu_used_counts_only_the_time_between_the_samples() -> None:
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = {"10": 500, "11": 40}
    # 10 used 30 ticks, 11 exited (its time cannot be known), 12 started meanwhile.
    after = {"10": 530, "12": 7}
    assert cpu_used(before, after) == (30 + 7) * tick
    assert cpu_used(before, {}) == 0
