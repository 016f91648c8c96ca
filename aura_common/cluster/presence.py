"""Member presence: what each member of a cluster publishes about itself, and reading it back.

Every `HEARTBEAT_INTERVAL` seconds each member's router writes its row of `members`: its
public host, the endpoint clients reach it on (the ports its live transports bound), the bound
addresses, and its live sessions (at most `MAX_SESSIONS` of them, so a row stays bounded; the
true count rides along). `updated_at` is set with the database's `now()`, so one clock decides
who is silent: a member not heard from for `DOWN_AFTER` seconds is down. `aura status
--cluster` and `aura sign-bridges --from-cluster` read the rows back, checking every field
(another machine wrote them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aura_common.config import ServerConfig
from aura_common.pki.manifest import (
    HostPorts,
    ManifestError,
    SignedManifest,
    endpoint_from_mapping,
    parse_body,
)
from aura_common.roles import is_transport
from aura_common.state.runtime import listening_ports

if TYPE_CHECKING:
    import psycopg

HEARTBEAT_INTERVAL = 2.0
DOWN_AFTER = 10.0  # five heartbeats missed
MAX_SESSIONS = 20_000  # per member row: about 2 MB of JSON at most
UNKNOWN_SILENCE = 10 * 365 * 86400.0  # a row whose time cannot be read counts as long silent

HEARTBEAT = """
    INSERT INTO members (name, updated_at, started_at, info)
    VALUES (%s, now(), to_timestamp(%s), %s)
    ON CONFLICT (name) DO UPDATE
        SET updated_at = now(), started_at = EXCLUDED.started_at, info = EXCLUDED.info
"""
# Nothing changed since the last heartbeat: only the time, not a megabyte of sessions again.
TOUCH = "UPDATE members SET updated_at = now() WHERE name = %s"
# The manifest with the highest serial any member published (checked by the reader).
NEWEST_MANIFEST = """
    SELECT info->'manifest' FROM members
    WHERE jsonb_typeof(info->'manifest_serial') = 'number'
      AND jsonb_typeof(info->'manifest') = 'object'
    ORDER BY (info->>'manifest_serial')::numeric DESC LIMIT 1
"""
READ = """
    SELECT name, extract(epoch FROM now() - updated_at)::float8,
           extract(epoch FROM started_at)::float8, info
    FROM members ORDER BY name
"""


@dataclass(frozen=True)
class LiveSession:
    peer: str
    transport: str
    endpoint: str
    handshake_at: float  # Unix time of the latest handshake


@dataclass(frozen=True)
class Member:
    name: str
    silent_for: float  # seconds since its last heartbeat, by the database's clock
    started_at: float | None
    public_host: str
    endpoint: HostPorts | None  # None: no transport of it is listening (or its row is damaged)
    transports: Mapping[str, tuple[str, ...]]  # transport -> bound addresses
    sessions: tuple[LiveSession, ...]
    sessions_total: int
    manifest: SignedManifest | None = None  # as published: not verified yet
    problem: str | None = None  # why its row could not be read in full

    @property
    def up(self) -> bool:
        return self.silent_for <= DOWN_AFTER


def member_info(
    public_host: str, bound: Mapping[str, Iterable[str]], sessions: Iterable[LiveSession],
    manifest: SignedManifest | None = None,
) -> dict[str, Any]:
    """The `info` a member publishes: `bound` holds the transports that are live now, and
    `manifest` the signed manifest it hands its clients (every member adopts the newest)."""
    transports = [{"name": name, "bound": list(addresses)}
                  for name, addresses in sorted(bound.items())]
    ports = listening_ports(bound)
    listed: list[dict[str, Any]] = []
    total = 0
    for session in sessions:
        total += 1
        if len(listed) < MAX_SESSIONS:
            listed.append({"peer": session.peer, "transport": session.transport,
                           "endpoint": session.endpoint, "handshake_at": session.handshake_at})
    return {
        "public_host": public_host,
        "endpoint": HostPorts(public_host, **ports).to_mapping() if ports else None,
        "transports": transports,
        "sessions": listed,
        "sessions_total": total,
        "manifest": None if manifest is None else manifest.to_mapping(),
        "manifest_serial": 0 if manifest is None else parse_body(manifest.body).serial,
    }


def read_members(conn: psycopg.Connection[Any]) -> list[Member]:
    return [parse_member(*row) for row in conn.execute(READ).fetchall()]


def cluster_members(config: ServerConfig) -> list[Member]:
    """Every member's row, from the cluster database; an AuraError names the database."""
    import psycopg  # only with a cluster configured

    from aura_common.cluster import database

    try:
        with database.connect(config) as conn:
            return read_members(conn)
    except psycopg.Error as error:
        raise database.unavailable(config, error) from None


def parse_member(name: object, silent_for: object, started_at: object, info: object) -> Member:
    """A row as read back; a damaged `info` gives a member without endpoint or sessions and a
    `problem` saying what is wrong, never an exception."""
    started = _number(started_at, math.nan)
    member = Member(
        name=str(name), silent_for=_number(silent_for, UNKNOWN_SILENCE),
        started_at=None if math.isnan(started) else started,
        public_host="", endpoint=None, transports={}, sessions=(), sessions_total=0,
    )
    try:
        return _parse_info(member, info)
    except (ValueError, TypeError, KeyError, ManifestError) as error:
        detail = error.detail if isinstance(error, ManifestError) else str(error)
        return dataclasses.replace(member, problem=f"unreadable info: {detail}")


def _parse_info(member: Member, info: object) -> Member:
    if not isinstance(info, dict):
        raise TypeError("expected an object")
    public_host = info["public_host"]
    if not isinstance(public_host, str):
        raise TypeError("public_host: expected a string")
    endpoint = None
    if info.get("endpoint") is not None:
        endpoint = endpoint_from_mapping(info["endpoint"])
    transports: dict[str, tuple[str, ...]] = {}
    for entry in _list(info, "transports"):
        bound = entry["bound"]
        if not is_transport(entry["name"]) or not isinstance(bound, list):
            raise ValueError(f"transports: unknown transport {entry['name']!r}")
        transports[entry["name"]] = tuple(str(address) for address in bound)
    sessions = tuple(
        LiveSession(str(s["peer"]), str(s["transport"]), str(s["endpoint"]),
                    _number(s["handshake_at"], 0.0))
        for s in _list(info, "sessions")[:MAX_SESSIONS]
    )
    manifest = None
    if info.get("manifest") is not None:
        manifest = SignedManifest.from_mapping(info["manifest"])
    total = info["sessions_total"]
    if isinstance(total, bool) or not isinstance(total, int) or total < len(sessions):
        raise ValueError("sessions_total: expected a count of at least the sessions listed")
    return dataclasses.replace(
        member, public_host=public_host, endpoint=endpoint, transports=transports,
        sessions=sessions, sessions_total=total, manifest=manifest,
    )


def _list(info: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = info[key]
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise TypeError(f"{key}: expected a list of objects")
    return value


def _number(value: object, fallback: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return fallback
    return float(value)
