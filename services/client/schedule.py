"""Which transport the client tries next, and how long it waits first. I/O-free.

Targets (a transport at a host) are tried in order; a full round of failures backs off (1 s
doubling to 30 s, with jitter) and starts over, forever. A path that breaks after coming up
starts over at the first (preferred) target at once, unless it broke soon after coming up,
which counts as a failure so a flapping path cannot spin.

While the live path is not the preferred one, every `PROBE_INTERVAL` seconds (with jitter) the
better transports are probed, best first, each beside the live path; the first that completes a
handshake takes over (`moved`). A round in which none does just waits for the next one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aura_common.config import ClientConfig
from aura_common.pki.manifest import Manifest
from aura_common.roles import Transport

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
JITTER = 0.2  # +-20 %
STABLE_AFTER = 30.0  # a session this old that breaks starts over without backoff
PROBE_INTERVAL = 30.0  # between rounds of probes for a better transport


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
    """The targets to try: every transport of the server host, then of each other endpoint
    the manifest lists (the other members of a cluster, or bridges), in manifest order.

    Within one host the transports follow the configured order, skipping those this client
    lacks. The server host's ports come from the manifest's endpoint for it when it has one
    (the server may have moved to other ports, or dropped a transport), else from the config.
    A client thus stays with its own server while it answers, moves to the next host when it
    does not, and (probing the better targets) comes back by itself.
    """
    home = config.server.host.lower().rstrip(".")
    hosts: list[tuple[str, dict[str, int]]] = [
        (config.server.host,
         {name: config.transports.port(Transport(name)) for name in config.transports.order}),
    ]
    listed = manifest.endpoints if manifest is not None and manifest.endpoints else ()
    for endpoint in listed:
        if endpoint.host.lower() == home:
            hosts[0] = (config.server.host, endpoint.ports())
        elif all(endpoint.host.lower() != host.lower() for host, _ in hosts):
            hosts.append((endpoint.host, endpoint.ports()))
    return [
        Target(name, host, ports[name])
        for host, ports in hosts
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
        self.live: Target | None = None  # the target of the path that is up
        self.probe_at: float | None = None  # when the next round of probes is due

    @property
    def current(self) -> Target:
        """The target to attempt next (the live one while a path is up)."""
        return self.order[self.index]

    def replace_order(self, order: Sequence[Target], now: float) -> None:
        """New targets (a newer manifest); the next attempt starts at the first one. A live path
        that is no longer the first is probed for a better one."""
        if not order:
            return
        self.order = list(order)
        self.index = 0
        if self.live is not None and self.probe_at is None:
            self._arm_probe(now)

    def failed(self) -> float:
        """The current attempt failed; returns the seconds to wait before `current`."""
        self.index += 1
        if self.index < len(self.order):
            return 0.0
        self.index = 0
        return self._next_backoff()

    def connected(self, now: float) -> None:
        """`current` is up."""
        self.live, self.up_since = self.current, now
        self._arm_probe(now)

    def lost(self, now: float) -> float:
        """The path broke after it was up; returns the wait before trying `current` (index 0)."""
        stable = self.up_since is not None and now - self.up_since >= STABLE_AFTER
        self.up_since = self.live = self.probe_at = None
        self.index = 0
        if stable:
            self.backoff = BACKOFF_FIRST
            return 0.0
        return self._next_backoff()

    # -- returning to a better transport ------------------------------------------------------

    def better(self) -> list[Target]:
        """Targets preferred to the live one, best first (all of them if the live one is no
        longer listed, as after a manifest that moved the server)."""
        if self.live is None:
            return []
        if self.live in self.order:
            return self.order[:self.order.index(self.live)]
        return list(self.order)

    def probes_due(self, now: float) -> list[Target]:
        """The targets to probe now, best first; empty while none is due."""
        if self.probe_at is None or now < self.probe_at:
            return []
        return self.better()

    def probes_failed(self, now: float) -> None:
        """A round of probes found nothing better; the next one is due an interval later."""
        self._arm_probe(now)

    def moved(self, target: Target, now: float) -> None:
        """A probe of `target` succeeded and the client switched to it."""
        self.index = self.order.index(target) if target in self.order else 0
        self.live, self.up_since = target, now
        self._arm_probe(now)

    def seconds_to_probe(self, now: float) -> float | None:
        """How long until the next round of probes; None when there will be none."""
        return None if self.probe_at is None else max(0.0, self.probe_at - now)

    def _arm_probe(self, now: float) -> None:
        self.probe_at = now + self._jittered(PROBE_INTERVAL) if self.better() else None

    def _next_backoff(self) -> float:
        delay = self._jittered(self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return delay

    def _jittered(self, seconds: float) -> float:
        return seconds * (1 + JITTER * (2 * self.rng() - 1))
