"""How the state files spell a time: ISO 8601, UTC, whole seconds, `Z`.

The registry (when a peer was added, when it expires), the leases and runtime.json write times
this way; client limits and the metrics read them back.
"""

from __future__ import annotations

import datetime


def format_time(moment: datetime.datetime) -> str:
    """The state files' spelling of a time: ISO 8601, UTC, seconds, `Z`."""
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def now_text() -> str:
    """This moment as `format_time` spells it (when a peer, lease or bound port began)."""
    return format_time(datetime.datetime.now(datetime.UTC))


def parse_time(text: str) -> datetime.datetime:
    """A time written by `format_time` (any ISO 8601 with an offset); ValueError otherwise."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment
