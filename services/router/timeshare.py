"""How much of the router's event loop its handshake work may take while data moves too.

The router answers handshakes (X25519 work) and moves every tunnel's packets on one event
loop. Handshakes are answered a bounded time per turn, but turns follow each other as fast
as the loop can go, so a flood of initiations that pass every check (thousands of proven
sources, each within its rate limit) would take as much of the process as it liked, and the
data path only what is left. WireGuard answers handshakes on a worker of their own, so
established sessions keep their share of the machine; here the loop's time is shared the
same way: while data has moved lately, handshake work runs only on time saved up at
`share` seconds a second (at most `burst` seconds of it; a turn that overruns leaves a debt
that later turns pay back), and with no data moving it may take all the loop's time, so the
handshake capacity of an idle server is unchanged. Times are a monotonic clock's, in
seconds; nothing here reads one.
"""

from __future__ import annotations


class TimeShare:
    def __init__(self, share: float, burst: float, data_recent: float) -> None:
        self._share, self._burst, self._data_recent = share, burst, data_recent
        self._saved = burst  # seconds of handshake work that may run now; below 0: a debt
        self._saved_at = float("-inf")
        self._data_at = float("-inf")

    def data_moved(self, now: float) -> None:
        """Packets went through the data path at `now`."""
        self._data_at = now

    def allowance(self, now: float) -> float:
        """Seconds of handshake work that may run now: unbounded while no data moves, and
        otherwise what was saved up (0 or less: none, until `wait` has passed)."""
        self._refill(now)
        if now - self._data_at >= self._data_recent:
            return float("inf")
        return self._saved

    def wait(self, now: float) -> float:
        """Seconds until `allowance` is above zero again while data keeps moving."""
        self._refill(now)
        return max(0.0, -self._saved / self._share)

    def spent(self, seconds: float, now: float) -> None:
        """Handshake work ran for `seconds`, ending at `now`. With no data moving it is free:
        the data path waited for nothing."""
        self._refill(now)
        if now - self._data_at < self._data_recent:
            self._saved -= seconds

    def _refill(self, now: float) -> None:
        elapsed = now - self._saved_at
        if elapsed > 0:
            self._saved = min(self._burst, self._saved + elapsed * self._share)
            self._saved_at = now
