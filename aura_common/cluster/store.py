"""The registry in a cluster's PostgreSQL database (`registry:` in server.yaml).

Rows are read like a file another account could have written: every peer is validated as
`registry.parse_peer` validates the file, the row count is bounded, and preshared keys are
stored sealed with the cluster key (`seal`). Edits run in one transaction under an advisory
lock, so two members provisioning at once allocate different addresses (the UNIQUE
constraints on the addresses are the database's own guarantee of the same).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from aura_common.cluster import database
from aura_common.cluster.seal import seal, unseal
from aura_common.config import ServerConfig, is_peer_name
from aura_common.errors import AuraError, ConfigError
from aura_common.pki.keys import read_key_file
from aura_common.state.registry import RegisteredPeer, Registry, parse_peer

MAX_PEERS = 1 << 20  # more rows than any pool holds: a database not to be trusted
REGISTRY_LOCK = 0x41555242  # advisory lock: one registry edit at a time, cluster-wide
SELECT_PEERS = ("SELECT name, public_key, preshared_key, host(address_v4), host(address_v6), "
                "enabled, created, expires, quota_bytes FROM peers")
_WRITE_COLUMNS = ("public_key = %(public_key)s, preshared_key = %(preshared_key)s, "
                  "address_v4 = %(address_v4)s::inet, address_v6 = %(address_v6)s::inet, "
                  "enabled = %(enabled)s, created = %(created)s, expires = %(expires)s, "
                  "quota_bytes = %(quota_bytes)s")
Row = Sequence[Any]


def peer_from_row(row: Row, key: bytes, where: str) -> RegisteredPeer:
    """A validated peer from a `SELECT_PEERS` row (the preshared key unsealed)."""
    if len(row) != 9:
        raise ConfigError(where, "peers", "rows of 9 columns", len(row))
    name, public_key, sealed, v4, v6, enabled, created, expires, quota = row
    if not isinstance(name, str) or not is_peer_name(name):
        raise ConfigError(where, "peers.name", "a name matching [a-z0-9][a-z0-9_.-]{0,31}", name)
    if not isinstance(public_key, bytes) or not isinstance(sealed, bytes | None):
        raise ConfigError(where, f"peers[{name}]", "bytea keys")
    psk = None if sealed is None else unseal(key, name, public_key, sealed)
    item = {
        "name": name,
        "public_key": base64.b64encode(public_key).decode(),
        "preshared_key": None if psk is None else base64.b64encode(psk).decode(),
        "address_v4": v4, "address_v6": v6, "enabled": enabled, "created": created,
        "expires": expires, "quota_bytes": quota,
    }
    return parse_peer(item, where, f"peers[{name}]")


def peers_from_rows(rows: Iterable[Row], key: bytes, where: str) -> list[RegisteredPeer]:
    peers: list[RegisteredPeer] = []
    for row in rows:
        if len(peers) == MAX_PEERS:
            raise ConfigError(where, "peers", f"at most {MAX_PEERS} rows")
        peers.append(peer_from_row(row, key, where))
    return peers


def _row_values(peer: RegisteredPeer, key: bytes) -> dict[str, Any]:
    sealed = None if peer.preshared_key is None else seal(
        key, peer.name, peer.public_key, peer.preshared_key
    )
    return {
        "name": peer.name, "public_key": peer.public_key, "preshared_key": sealed,
        "address_v4": peer.address_v4, "address_v6": peer.address_v6, "enabled": peer.enabled,
        "created": peer.created, "expires": peer.expires, "quota_bytes": peer.quota_bytes,
    }


class DatabaseStore:
    """`RegistryStore` on the database: what the CLI of any member reads and changes."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.registry is not None
        self.config = config
        self.where = database.describe(config.registry.database)

    @property
    def key(self) -> bytes:
        return read_key_file(self.config.cluster_key_file)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        assert self.config.registry is not None
        with database.connect(self.config) as conn:
            database.check_schema(database.schema_version(conn), self.config.registry.database)
            try:
                yield conn
            except psycopg.OperationalError as error:
                raise database.unavailable(self.config, error) from None

    def load(self) -> Registry:
        key = self.key
        with self._connection() as conn:
            rows = conn.execute(SELECT_PEERS + " ORDER BY name LIMIT %s",
                                (MAX_PEERS + 1,)).fetchall()
        return self._registry(peers_from_rows(rows, key, self.where))

    def _registry(self, peers: list[RegisteredPeer]) -> Registry:
        try:
            return Registry(self.config.registry_copy_file, peers)
        except AuraError as error:
            raise ConfigError(self.where, "peers", "unique names, keys and addresses",
                              str(error)) from None

    @contextlib.contextmanager
    def edit(self) -> Iterator[Registry]:
        key = self.key
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (REGISTRY_LOCK,))
            rows = conn.execute(SELECT_PEERS + " ORDER BY name LIMIT %s",
                                (MAX_PEERS + 1,)).fetchall()
            before = {p.name: p for p in peers_from_rows(rows, key, self.where)}
            registry = self._registry(list(before.values()))
            yield registry
            try:
                self._write(conn, before, registry, key)
            except pg_errors.UniqueViolation as error:
                detail = error.diag.message_detail or str(error)
                raise AuraError(f"{self.where} refused the change: {detail}") from None

    def _write(self, conn: psycopg.Connection[tuple[Any, ...]], before: dict[str, RegisteredPeer],
               after: Registry, key: bytes) -> None:
        gone = [name for name in before if name not in after]
        if gone:
            conn.execute("DELETE FROM peers WHERE name = ANY(%s)", (gone,))
        for peer in after:
            old = before.get(peer.name)
            if old == peer:
                continue
            values = _row_values(peer, key)
            if old is None:
                conn.execute(
                    "INSERT INTO peers (name, public_key, preshared_key, address_v4, address_v6,"
                    " enabled, created, expires, quota_bytes) VALUES (%(name)s, %(public_key)s,"
                    " %(preshared_key)s, %(address_v4)s::inet, %(address_v6)s::inet,"
                    " %(enabled)s, %(created)s, %(expires)s, %(quota_bytes)s)", values)
            else:
                conn.execute(f"UPDATE peers SET {_WRITE_COLUMNS} WHERE name = %(name)s", values)

    def usage(self) -> dict[str, int]:
        """Cluster-wide usage totals as the members last flushed them."""
        with self._connection() as conn:
            rows = conn.execute("SELECT peer, bytes FROM usage LIMIT %s",
                                (MAX_PEERS + 1,)).fetchall()
        return {str(name): int(count) for name, count in rows[:MAX_PEERS]
                if isinstance(count, int) and count >= 0}
