"""The router's heartbeat into the cluster database (`aura_common.cluster.presence`).

Its own connection, apart from the registry's: a heartbeat that cannot be written only makes
this member show as down elsewhere, it never holds up the data path. The database away is one
warning, then retries with backoff; coming back is one info line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from aura_common.cluster import database, presence
from aura_common.config import ServerConfig
from aura_common.errors import AuraError
from aura_common.pki.manifest import ManifestError, SignedManifest
from aura_common.state import runtime

log = logging.getLogger("aura-router")

RETRY_FIRST = 1.0
RETRY_MAX = 10.0


class Member(Protocol):
    """What the heartbeat reads from the router, and the manifest it hands back."""

    manifest: SignedManifest | None

    def live_transports(self) -> set[str]: ...

    def live_sessions(self) -> list[presence.LiveSession]: ...

    def adopt_manifest(self, signed: SignedManifest) -> None: ...


def snapshot(config: ServerConfig, router: Member) -> dict[str, Any]:
    bound = runtime.read_runtime_for_service(config.transports_dir)
    live = router.live_transports()
    return presence.member_info(
        config.public_host,
        {name: entry["bound"] for name, entry in bound.items() if name in live},
        router.live_sessions(),
        router.manifest,
    )


async def publish(
    conn: psycopg.AsyncConnection[Any], member: str, started_at: float,
    info: dict[str, Any] | None,
) -> None:
    """One heartbeat; `info` None means unchanged since the last one this connection made."""
    if info is None:
        cursor = await conn.execute(presence.TOUCH, (member,))
        if cursor.rowcount == 1:
            return
        raise LookupError(f"the row of member {member!r} is gone")
    await conn.execute(presence.HEARTBEAT, (member, started_at, Jsonb(info)))


async def newest_manifest(conn: psycopg.AsyncConnection[Any]) -> SignedManifest | None:
    """The newest manifest any member published, if it is well formed (the router checks
    its signature)."""
    cursor = await conn.execute(presence.NEWEST_MANIFEST)
    row = await cursor.fetchone()
    if row is None:
        return None
    try:
        return SignedManifest.from_mapping(row[0])
    except ManifestError:
        return None


async def publish_forever(config: ServerConfig, router: Member) -> None:
    assert config.registry is not None
    member, started_at = config.registry.member, time.time()
    conn: psycopg.AsyncConnection[Any] | None = None
    published: dict[str, Any] | None = None  # what the row holds, as far as we know
    retry = RETRY_FIRST
    failing = False
    try:
        while True:
            try:
                if conn is None:
                    conn = await database.connect_async(config)
                info = snapshot(config, router)
                await publish(conn, member, started_at, None if info == published else info)
                published = info
                newest = await newest_manifest(conn)
                if newest is not None:
                    router.adopt_manifest(newest)
            except (AuraError, psycopg.Error, LookupError, OSError) as error:
                if not failing:
                    log.warning("cannot publish this member's heartbeat (%s); retrying, it "
                                "shows as down in the cluster meanwhile", error)
                failing, published = True, None
                if conn is not None:
                    await conn.close()
                    conn = None
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX)
                continue
            if failing:
                log.info("publishing this member's heartbeat again as %r", member)
            failing, retry = False, RETRY_FIRST
            await asyncio.sleep(presence.HEARTBEAT_INTERVAL)
    finally:
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
