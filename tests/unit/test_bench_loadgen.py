"""`bench.loadgen`'s search for the handshake rate the server keeps up with."""

from __future__ import annotations

from bench.loadgen import RampSearch


def run(search: RampSearch, threshold: float, reach: float = float("inf")) -> list[float]:
    """Drive `search` against a server that falls behind (cookies, unanswered initiations) from
    `threshold`/s offered and a sender that offers at most `reach`/s; returns the rates asked
    for."""
    asked = []
    while (rate := search.rate) is not None:
        asked.append(rate)
        offered = min(rate, reach)
        search.record(offered, offered >= threshold)
    return asked


def test_the_search_doubles_until_the_server_falls_behind_then_halves_the_gap() -> None:
    search = RampSearch(start=50, ceiling=6400, refine=4)
    asked = run(search, threshold=1100)
    assert asked[:6] == [50, 100, 200, 400, 800, 1600]
    assert asked[6:] == [1200, 1000, 1100, 1050]
    # The knee is pinned within (1600 - 800) / 2**4 = 50/s.
    assert search.kept_up == 1050 and search.behind == 1100


def test_the_bounds_are_what_was_offered_not_what_was_asked() -> None:
    search = RampSearch(start=50, ceiling=6400, refine=2)
    run(search, threshold=2000, reach=1500)
    assert search.behind is None and search.kept_up == 1500  # never reached the threshold


def test_no_bisection_below_a_first_step_the_server_fell_behind_at() -> None:
    search = RampSearch(start=50, ceiling=6400, refine=4)
    assert run(search, threshold=10) == [50]
    assert search.kept_up is None and search.behind == 50


def test_the_doubling_stops_at_the_ceiling() -> None:
    search = RampSearch(start=50, ceiling=400, refine=4)
    assert run(search, threshold=10_000) == [50, 100, 200, 400]

