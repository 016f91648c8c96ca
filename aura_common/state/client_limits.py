"""Client limits: an expiry time and a traffic quota per peer, and the usage they are held to.

Usage is the bytes of IP packets through the tunnel, both ways: what the router accepted from
the peer (after the source-address check) plus what it dispatched from the TUN to the peer.
WireGuard, UDP, TLS and QUIC overhead is not counted; it is the traffic the user sees.

The decision (`refusal`) is a pure function of the peer, its usage and the time, so the router
applies it with the real clock and tests with any. The `Usage` ledger is the router's alone:
it keeps the running totals in memory and writes `state_dir/router/usage.json` atomically, at most
once per `SAVE_INTERVAL` while something changed, when a peer crosses its quota, and on
shutdown. A crash loses at most that interval of counting.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
from collections.abc import Iterable
from fractions import Fraction
from typing import Protocol

from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import parse_versioned_json, read_state_file, write_atomic
from aura_common.state.timestamps import parse_time

log = logging.getLogger(__name__)

USAGE_VERSION = 1
SAVE_INTERVAL = 30.0
UNLIMITED = ("never", "none")

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
SIZE_EXAMPLE = "a size such as 50GiB, 500MB or 1.5TiB (units B, KB, MB, GB, TB, KiB .. TiB)"
EXPIRY_EXAMPLE = ("a duration such as 30d, 12h or 2w, a date such as 2027-01-31 (00:00 UTC), "
                  "a time such as 2027-01-31T18:00+01:00, or never")


class Limited(Protocol):
    """What the decision needs of a peer (`registry.RegisteredPeer` has it), read-only."""

    @property
    def name(self) -> str: ...
    @property
    def expires(self) -> str | None: ...
    @property
    def quota_bytes(self) -> int | None: ...


def parse_duration(text: str) -> int:
    """Seconds in "30d", "12h", "90m", "2w", "1d12h"; AuraError otherwise."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise AuraError(f"{text!r}: expected a duration such as 30d, 12h, 90m or 2w")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))
    if seconds <= 0:
        raise AuraError(f"{text!r}: a duration must be longer than zero")
    return seconds


def parse_expiry(text: str, now: datetime.datetime) -> datetime.datetime | None:
    """When a limit given on the command line ends (UTC); None for never.

    A duration counts from `now`; a date means 00:00 UTC that day; a time without an offset
    is UTC.
    """
    value = text.strip()
    if value.lower() in UNLIMITED:
        return None
    if _DURATION.fullmatch(value.lower()):
        return now.astimezone(datetime.UTC) + datetime.timedelta(seconds=parse_duration(value))
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AuraError(f"--expires {text!r}: expected {EXPIRY_EXAMPLE}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def parse_size(text: str) -> int | None:
    """Bytes in "50GiB", "500MB", "1.5TiB", "1000000"; None for "none"/"never"."""
    value = text.strip().lower()
    if value in UNLIMITED:
        return None
    match = _SIZE.fullmatch(value)
    unit = _SIZE_UNITS.get(match.group(2) or "b") if match else None
    if match is None or unit is None:
        raise AuraError(f"--quota {text!r}: expected {SIZE_EXAMPLE}, or none")
    size = int(Fraction(match.group(1)) * unit)  # exact, also for 1.5TiB
    if size <= 0:
        raise AuraError(f"--quota {text!r}: expected {SIZE_EXAMPLE}, at least one byte")
    return size


def format_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def refusal(peer: Limited, used: int, now: float) -> str | None:
    """Why `peer` may not connect at `now` (a Unix time) having used `used` bytes, or None."""
    if peer.expires is not None and now >= parse_time(peer.expires).timestamp():
        return f"expired at {peer.expires}"
    if peer.quota_bytes is not None and used >= peer.quota_bytes:
        return f"quota used up ({format_size(used)} of {format_size(peer.quota_bytes)})"
    return None


class Usage:
    """Bytes each peer has moved through the tunnel, kept across restarts in one file."""

    def __init__(self, path: str | os.PathLike[str], totals: dict[str, int] | None = None) -> None:
        self.path = os.fspath(path)
        self._totals: dict[str, int] = dict(totals or {})
        self._dirty = False
        self._saved_at = float("-inf")
        self._failing = False  # the last save failed (logged once per streak)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Usage:
        """The ledger in `path`; a missing file is an empty ledger."""
        path = os.fspath(path)
        data = read_state_file(path)
        return cls(path) if data is None else cls(path, parse_usage(data, path))

    def get(self, name: str) -> int:
        return self._totals.get(name, 0)

    def totals(self) -> dict[str, int]:
        return dict(self._totals)

    def add(self, name: str, count: int) -> None:
        if count:
            self._totals[name] = self._totals.get(name, 0) + count
            self._dirty = True

    def retain(self, names: Iterable[str]) -> None:
        """Forget peers that are gone, so a new peer of the same name starts from zero."""
        keep = set(names)
        for name in [n for n in self._totals if n not in keep]:
            del self._totals[name]
            self._dirty = True

    def save_due(self, now: float) -> bool:
        return self._dirty and now - self._saved_at >= SAVE_INTERVAL

    def save(self, now: float) -> None:
        """Write the file; a failure (OSError, AuraError) is retried after SAVE_INTERVAL."""
        # Only the router writes this file, so no lock is taken.
        self._saved_at = now
        doc = {"version": USAGE_VERSION, "bytes": dict(sorted(self._totals.items()))}
        try:
            write_atomic(self.path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o640)
        except OSError as error:
            # A full or read-only state directory: counting goes on in memory, the file keeps
            # its last content, and the next save (SAVE_INTERVAL later) tries again.
            if not self._failing:
                log.error("cannot write %s: %s; usage is kept in memory and saved again later",
                          self.path, error.strerror)
            self._failing = True
            self._dirty = True
            self._saved_at = now
            return
        self._failing = False
        self._dirty = False


def parse_usage(data: bytes, path: str) -> dict[str, int]:
    doc = parse_versioned_json(data, path, USAGE_VERSION)
    totals = doc.get("bytes")
    if not isinstance(totals, dict):
        raise ConfigError(path, "bytes", "an object of peer name to byte count", totals)
    for name, count in totals.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigError(path, f"bytes.{name}", "a byte count (integer >= 0)", count)
    return dict(totals)


class Gate:
    """Which peers are refused now, and which changed since the last review."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}  # peer name -> why

    def review(
        self, peers: Iterable[Limited], usage: Usage, now: float
    ) -> tuple[dict[str, str], list[str]]:
        """Decide every peer at `now`; return the newly refused (with why) and the let back in.

        Pass every peer that has a limit; a peer not passed is not refused.
        """
        refused = {}
        for peer in peers:
            why = refusal(peer, usage.get(peer.name), now)
            if why is not None:
                refused[peer.name] = why
        newly = {name: why for name, why in refused.items() if name not in self.refused}
        lifted = [name for name in self.refused if name not in refused]
        self.refused = refused
        return newly, lifted
