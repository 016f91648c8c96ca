"""A cluster member's registry, kept current from the shared database.

The router starts from the last copy it wrote (`state_dir/router/registry-copy.json`), then follows
the database on two connections of its own: one only LISTENs (`aura_registry`, a payload per
changed peer), the other reads the peers named, re-reads everything every FULL_READ_INTERVAL
and after each reconnect (the safety net for anything a notification missed), and adds the
usage this member counted to the cluster's totals. Nothing here blocks the event loop: the
connections are psycopg's async ones, rows are validated and keys unsealed in a thread, every
query has a deadline. While the database is away the member keeps serving the registry it has,
logs one warning, retries with a growing pause and catches up when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg

from aura_common.cluster import database
from aura_common.cluster.store import MAX_PEERS, SELECT_PEERS, peers_from_rows
from aura_common.config import ServerConfig, is_peer_name
from aura_common.errors import AuraError, ConfigError
from aura_common.ipc.frames import RegistryState
from aura_common.pki.keys import read_key_file
from aura_common.state.atomic import parse_versioned_json, read_state_file, write_atomic
from aura_common.state.client_limits import Usage
from aura_common.state.registry import RegisteredPeer, Registry, registry_document

log = logging.getLogger("aura-router")

FULL_READ_INTERVAL = 30.0
USAGE_FLUSH_INTERVAL = 2.0
QUERY_TIMEOUT = 10.0
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
PENDING_LIMIT = 1000  # more changed names than this at once: re-read everything instead
COPY_INTERVAL = 1.0  # the local copy is rewritten at most this often
# Dynamic pool: a member leases only inside blocks of host indices it claimed in the database,
# so two members never hand out one address; another block is claimed when fewer than
# LOW_WATER addresses are left in its blocks.
BLOCK_SIZE, LOW_WATER = 16, 4
BLOCKS_VERSION = 1


class SharedUsage(Usage):
    """Usage in a cluster: the database's totals (every member's) as last read, plus what this
    member counted and has not added to them yet. Only the latter is this member's file, so a
    member restarted while the database is away loses none of it."""

    def __init__(self, path: str, totals: dict[str, int] | None = None) -> None:
        super().__init__(path, totals)
        self.shared: dict[str, int] = {}

    def get(self, name: str) -> int:
        return self.shared.get(name, 0) + super().get(name)

    def flushed(self, sent: dict[str, int], shared: dict[str, int]) -> None:
        """`sent` is in the database now, whose totals are `shared`."""
        for name, count in sent.items():
            left = self._totals.get(name, 0) - count
            if left > 0:
                self._totals[name] = left
            else:
                self._totals.pop(name, None)
        self._dirty = True
        self.shared = shared

    def retain(self, names: Any) -> None:
        keep = set(names)
        super().retain(keep)
        self.shared = {n: c for n, c in self.shared.items() if n in keep}


class DatabaseFeed:
    def __init__(self, config: ServerConfig, usage: SharedUsage,
                 current: Callable[[], Registry], apply: Callable[[Registry], None],
                 in_use: Callable[[], set[str]]) -> None:
        assert config.registry is not None
        self.config = config
        self.where = database.describe(config.registry.database)
        self.usage = usage
        self._current, self._apply = current, apply
        self.connected = False
        self.since = time.time()  # of the present state (connected or not)
        self._wake = asyncio.Event()
        self._pending: set[str] = set()
        self._full = True
        self._copy_task: asyncio.Task[None] | None = None
        self._copy_again = False
        self._in_use = in_use
        self.blocks = self._read_blocks()
        self._blocks_saved = set(self.blocks)

    # -- dynamic lease blocks --------------------------------------------------------------------
    @property
    def blocks_file(self) -> str:
        return os.path.join(self.config.router_dir, "lease-blocks.json")

    def _read_blocks(self) -> set[int]:
        """The blocks this member held when it last knew (a restart with the database away)."""
        data = read_state_file(self.blocks_file)
        if data is None:
            return set()
        try:
            document = parse_versioned_json(data, self.blocks_file, BLOCKS_VERSION)
        except AuraError as error:
            log.warning("ignoring %s (rewritten once the database answers)", error)
            return set()
        return self._valid_blocks(document.get("blocks"))

    def _valid_blocks(self, values: object) -> set[int]:
        size = self.config.network.ipv4.num_addresses
        if not isinstance(values, list):
            return set()
        return {v for v in values if isinstance(v, int) and not isinstance(v, bool)
                and 0 <= v < size and v % BLOCK_SIZE == 0}

    def lease_indices(self) -> list[int]:
        """The host indices this member may lease from."""
        return [i for block in sorted(self.blocks) for i in range(block, block + BLOCK_SIZE)]

    def _free_in_blocks(self) -> int:
        network = self.config.network.ipv4
        used = self._in_use()
        last = network.num_addresses - 1
        return sum(1 for i in self.lease_indices()
                   if 2 <= i < last and str(network.network_address + i) not in used)

    async def _claim_blocks(self, query: psycopg.AsyncConnection[Any]) -> None:
        if self.config.network.strategy != "dynamic":
            return
        assert self.config.registry is not None
        member = self.config.registry.member
        rows = await self._rows(query, "SELECT first_index FROM lease_blocks WHERE member = %s",
                                (member,))
        owned = self._valid_blocks([row[0] for row in rows])
        if owned != self.blocks:
            self.blocks = owned
        if self._free_in_blocks() < LOW_WATER:
            last = self.config.network.ipv4.num_addresses - 1
            claimed = await self._rows(
                query,
                "INSERT INTO lease_blocks (first_index, member) SELECT b, %s "
                "FROM generate_series(0, %s, %s) AS b WHERE NOT EXISTS "
                "(SELECT 1 FROM lease_blocks WHERE first_index = b) ORDER BY b LIMIT 1 "
                "ON CONFLICT DO NOTHING RETURNING first_index",
                (member, last, BLOCK_SIZE))
            if claimed:
                self.blocks |= self._valid_blocks([claimed[0][0]])
                log.info("claimed addresses %s.. of the pool for dynamic leases",
                         self.config.network.ipv4.network_address + claimed[0][0])
        if self.blocks != self._blocks_saved:
            document = {"version": BLOCKS_VERSION, "blocks": sorted(self.blocks)}
            await asyncio.to_thread(write_atomic, self.blocks_file,
                                    (json.dumps(document) + "\n").encode(), 0o644)
            self._blocks_saved = set(self.blocks)

    def initial(self) -> Registry:
        """The registry to start with: the last copy written (an empty one before any).

        A damaged copy must not keep the member from starting: the database fills it in.
        """
        try:
            return Registry.load(self.config.registry_copy_file)
        except ConfigError as error:
            log.warning("ignoring the damaged registry copy (rewritten from the database): %s",
                        error)
            return Registry(self.config.registry_copy_file)

    def status(self) -> RegistryState:
        return RegistryState("database" if self.connected else "copy", self.connected,
                             self.since, self.where)

    def refresh(self) -> None:
        """Re-read everything soon (SIGHUP, `reload`)."""
        self._full = True
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        pause = RETRY_FIRST
        warned = False
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except (AuraError, psycopg.Error, OSError, TimeoutError) as error:
                text = str(error) if isinstance(error, AuraError) else \
                    str(database.unavailable(self.config, error))
                if self.connected or not warned:
                    log.warning("%s; serving the %d peers known, refusing nothing that is "
                                "connected; retrying every %.0f s at most", text,
                                len(self._current()), RETRY_MAX)
                    warned = True
                else:
                    log.debug("registry database: %s", text)
                if self.connected:
                    self.connected, self.since = False, time.time()
                    pause = RETRY_FIRST
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def _follow(self) -> None:
        key = await asyncio.to_thread(read_key_file, self.config.cluster_key_file)
        listen = await database.connect_async(self.config)
        try:
            query = await database.connect_async(self.config)
        except BaseException:
            await listen.close()
            raise
        async with listen, query:
            version = await self._fetch_one(query, "SELECT max(version) FROM schema_version")
            assert self.config.registry is not None
            database.check_schema(version if isinstance(version, int) else None,
                                  self.config.registry.database)
            await listen.execute("LISTEN aura_registry")
            self._full = True
            listener = asyncio.get_running_loop().create_task(self._listen(listen))
            listener.add_done_callback(lambda _: self._wake.set())
            try:
                await self._serve(query, key, listener)
            finally:
                listener.cancel()
                # wait(), not await: our own cancellation must not be swallowed with its.
                await asyncio.wait([listener])

    async def _serve(self, query: psycopg.AsyncConnection[Any], key: bytes,
                     listener: asyncio.Task[None]) -> None:
        next_full = 0.0
        next_flush = 0.0
        while True:
            now = time.monotonic()
            if self._full or now >= next_full:
                self._full = False
                self._pending.clear()
                await self._read_all(query, key)
                next_full = now + FULL_READ_INTERVAL
            elif self._pending:
                names, self._pending = sorted(self._pending), set()
                await self._read_some(query, key, names)
            if not self.connected:
                self.connected, self.since = True, time.time()
                log.info("following %s: %d peers", self.where, len(self._current()))
            if now >= next_flush:
                await self._flush_usage(query)
                await self._claim_blocks(query)
                next_flush = now + USAGE_FLUSH_INTERVAL
            if listener.done():
                listener.result()  # its error ends this connection; a clean end cannot happen
                raise AuraError(f"{self.where}: the notification connection ended")
            self._wake.clear()
            if self._full or self._pending:
                continue
            timeout = max(0.0, min(next_full, next_flush) - time.monotonic())
            # asyncio.timeout, never wait_for: on Python 3.11 wait_for returns the result when
            # its awaitable finishes as the task is cancelled (a notification, a reload as the
            # router stops), the cancellation is lost and this loop outlives its router.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _listen(self, listen: psycopg.AsyncConnection[Any]) -> None:
        async for notify in listen.notifies():
            name = notify.payload
            if name == "*" or len(self._pending) >= PENDING_LIMIT:
                self._full = True
            elif is_peer_name(name):
                self._pending.add(name)
            self._wake.set()

    # -- reading -----------------------------------------------------------------------------
    async def _rows(self, query: psycopg.AsyncConnection[Any], sql: str,
                    params: tuple[Any, ...]) -> list[Any]:
        async def run() -> list[Any]:
            cursor = await query.execute(sql, params)
            return await cursor.fetchall()

        async with asyncio.timeout(QUERY_TIMEOUT):
            return await run()

    async def _fetch_one(self, query: psycopg.AsyncConnection[Any], sql: str) -> object:
        rows = await self._rows(query, sql, ())
        return rows[0][0] if rows else None

    async def _read_all(self, query: psycopg.AsyncConnection[Any], key: bytes) -> None:
        rows = await self._rows(query, SELECT_PEERS + " ORDER BY name LIMIT %s",
                                (MAX_PEERS + 1,))

        def build() -> Registry:
            peers = peers_from_rows(rows, key, self.where)
            return Registry(self.config.registry_copy_file, peers)

        try:
            registry = await asyncio.to_thread(build)
        except AuraError as error:
            raise AuraError(f"{self.where}: {error}") from None
        if _same(registry, self._current()):
            return
        self._apply(registry)
        self._save_copy()

    async def _read_some(self, query: psycopg.AsyncConnection[Any], key: bytes,
                         names: list[str]) -> None:
        rows = await self._rows(query, SELECT_PEERS + " WHERE name = ANY(%s) LIMIT %s",
                                (names, len(names)))
        changed = await asyncio.to_thread(peers_from_rows, rows, key, self.where)
        registry = self._current()
        for name in names:
            if name in registry:
                registry.revoke(name)
        try:
            for peer in changed:
                registry.add(peer)
        except AuraError:
            # Applied out of order with another change: read it all.
            self._full = True
            return
        self._apply(registry)
        self._save_copy()

    # -- usage ---------------------------------------------------------------------------------
    async def _flush_usage(self, query: psycopg.AsyncConnection[Any]) -> None:
        sent = self.usage.totals()
        sent = {name: count for name, count in sent.items() if count > 0}

        async def run() -> list[Any]:
            if sent:
                await query.execute(
                    "INSERT INTO usage (peer, bytes) SELECT u.peer, u.bytes FROM "
                    "unnest(%s::text[], %s::bigint[]) AS u(peer, bytes) "
                    "WHERE EXISTS (SELECT 1 FROM peers WHERE name = u.peer) "
                    "ON CONFLICT (peer) DO UPDATE SET bytes = usage.bytes + EXCLUDED.bytes",
                    (list(sent), list(sent.values())))
            cursor = await query.execute("SELECT peer, bytes FROM usage LIMIT %s",
                                         (MAX_PEERS + 1,))
            return await cursor.fetchall()

        async with asyncio.timeout(QUERY_TIMEOUT):
            rows = await run()
        shared = {name: count for name, count in rows[:MAX_PEERS]
                  if isinstance(name, str) and isinstance(count, int) and count >= 0}
        self.usage.flushed(sent, shared)

    # -- the local copy ------------------------------------------------------------------------
    def _save_copy(self) -> None:
        """Write the copy in a thread, at most every COPY_INTERVAL; the last state wins."""
        if self._copy_task is not None and not self._copy_task.done():
            self._copy_again = True
            return
        self._copy_task = asyncio.get_running_loop().create_task(self._write_copy())

    async def _write_copy(self) -> None:
        while True:
            self._copy_again = False
            # Frozen peers: the thread serialises a snapshot.
            peers = list(self._current())
            try:
                await asyncio.to_thread(_write_copy, self.config.registry_copy_file, peers)
            except (OSError, AuraError) as error:
                log.error("cannot write the registry copy %s: %s",
                          self.config.registry_copy_file, error)
            await asyncio.sleep(COPY_INTERVAL)
            if not self._copy_again:
                return


def _write_copy(path: str, peers: list[RegisteredPeer]) -> None:
    write_atomic(path, registry_document(peers), mode=0o600)


def _same(a: Registry, b: Registry) -> bool:
    if len(a) != len(b):
        return False
    return all(b.get(peer.name) == peer for peer in a)

