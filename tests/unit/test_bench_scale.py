"""`bench.scale`: its CPU accounting between two samples of the processes' clock ticks, and
which handshake steps the server fell behind at."""

from __future__ import annotations

import os

import pytest

from bench.scale import Cores, cpu_used, fell_behind


def test_cpu_used_counts_only_the_time_between_the_samples() -> None:
    tick = 1 / os.sysconf("SC_CLK_TCK")
    before = {"10": (500, 100), "11": (40, 4)}
    # 10 used 30 + 5 ticks, 11 exited (its time cannot be known), 12 started meanwhile.
    after = {"10": (530, 105), "12": (7, 2)}
    used = cpu_used(before, after, 2.0)
    assert (used.user, used.system) == pytest.approx(((30 + 7) * tick / 2, (5 + 2) * tick / 2))
    assert cpu_used(before, {}, 2.0) == Cores(0, 0)


def test_a_handshake_step_is_behind_with_a_cookie_or_an_unanswered_initiation() -> None:
    step = {"offered_per_s": 1000.0, "initiations": 1000, "completed": 1000,
            "cookie_replies": 0}
    assert not fell_behind(step)
    assert fell_behind({**step, "cookie_replies": 1})
    assert fell_behind({**step, "completed": 999})
