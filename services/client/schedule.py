"""Which transport the client tries next, and how long it waits first. I/O-free.

Transports are tried in order; a full round of failures backs off (1 s doubling to 30 s, with
jitter) and starts over, forever. A path that breaks after coming up starts over at the first
(preferred) transport at once, unless it broke soon after coming up, which counts as a failure
so a flapping path cannot spin. While on a fallback, the preferred transport is retried every
`PREFERRED_RETRY` seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aura_common.config import ClientConfig
from aura_common.manifest import Manifest

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
JITTER = 0.2  # +-20 %
STABLE_AFTER = 30.0  # a session this old that breaks starts over without backoff


@dataclass(frozen=True)
class Target:
    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport} {host}:{self.port}"


def targets(
    config: ClientConfig, manifest: Manifest | None, available: Sequence[str]
) -> list[Target]:
    """The transports to try, in the configured order, skipping those this client lacks.

    Ports come from the manifest's endpoint for the server host when it has one (the server
    may have moved to other ports, or dropped a transport), else from the config.
    """
    host = config.server.host
    ports = {name: getattr(config.transports, name) for name in config.transports.order}
    if manifest is not None and manifest.endpoints is not None:
        for endpoint in manifest.endpoints:
            if endpoint.host.lower() == host.lower().rstrip("."):
                ports = endpoint.ports()
                break
    return [
        Target(name, host, ports[name])
        for name in config.transports.order
        if name in ports and name in available
    ]


class Schedule:
    def __init__(self, order: Sequence[Target], rng: Callable[[], float] = random.random) -> None:
        if not order:
            raise ValueError("no transport to try")
        self.order = list(order)
        self.index = 0
        self.rng = rng
        self.backoff = BACKOFF_FIRST
        self.up_since: float | None = None

    @property
    def current(self) -> Target:
        return self.order[self.index]

    def replace_order(self, order: Sequence[Target]) -> None:
        """New targets (a newer manifest); the next attempt starts at the first one."""
        if order:
            self.order = list(order)
            self.index = 0

    def failed(self) -> float:
        """The current attempt failed; returns the seconds to wait before `current`."""
        self.index += 1
        if self.index < len(self.order):
            return 0.0
        self.index = 0
        return self._next_backoff()

    def connected(self, now: float) -> None:
        self.up_since = now

    def lost(self, now: float) -> float:
        """The path broke after it was up; returns the wait before trying `current` (index 0)."""
        stable = self.up_since is not None and now - self.up_since >= STABLE_AFTER
        self.up_since = None
        self.index = 0
        if stable:
            self.backoff = BACKOFF_FIRST
            return 0.0
        return self._next_backoff()

    def _next_backoff(self) -> float:
        delay = self.backoff * (1 + JITTER * (2 * self.rng() - 1))
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return delay
