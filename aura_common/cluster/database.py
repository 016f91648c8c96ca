"""The registry database: the connection string, its password, and the schema version.

The password never sits in `server.yaml`: it comes from `registry.password_file` or from the
systemd credential `registry-password` (LoadCredential=). Errors name the database by the
connection string's hosts and database name, never by anything secret.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from aura_common.cluster.schema import MIGRATIONS
from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import read_bounded

CONNECT_TIMEOUT = 3  # seconds per host, unless the connection string sets connect_timeout
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "3",
              "keepalives_count": "3"}
PASSWORD_LIMIT = 1024
SCHEMA_LOCK = 0x41555241  # advisory lock: one `aura server init` migrates at a time
CONNINFO_EXAMPLE = "'host=db1,db2 dbname=aura user=aura target_session_attrs=read-write'"
_SHOWN = ("host", "hostaddr", "port", "dbname")
ERROR_LIMIT = 300  # characters of a server's or libpq's error text quoted in our one line


class DatabaseUnavailable(AuraError):
    """The registry database cannot be reached (or refused us); the message names it."""


def conninfo_problem(text: str) -> str | None:
    """What is wrong with a `registry.database` value, as an "expected ..." phrase; or None."""
    try:
        params = conninfo_to_dict(text)
    except psycopg.ProgrammingError:
        return f"a libpq connection string such as {CONNINFO_EXAMPLE}"
    if "password" in params:
        return ("no password= in the connection string (put the password in "
                "registry.password_file or the systemd credential registry-password)")
    return None


def describe(database: str) -> str:
    """How messages name the database: its hosts, port and name from the connection string."""
    params = conninfo_to_dict(database)
    shown = " ".join(f"{key}={params[key]}" for key in _SHOWN if key in params)
    return f"the registry database ({shown or 'libpq defaults'})"


def read_password(path: str) -> str:
    """The password in `path`: its first line, without the newline."""
    data = read_bounded(path, PASSWORD_LIMIT, "a readable password file")
    text = data.split(b"\n", 1)[0].rstrip(b"\r")
    if len(data) > PASSWORD_LIMIT or not text:
        raise ConfigError(path, "", f"one line of 1 to {PASSWORD_LIMIT} bytes (the password)")
    try:
        return text.decode()
    except UnicodeDecodeError:
        raise ConfigError(path, "", "a UTF-8 password") from None


def connection_string(config: ServerConfig) -> str:
    """`registry.database` with the password, a connect timeout and our name added."""
    registry = config.registry
    if registry is None:
        raise AuraError(f"{config.path}: registry: no database configured")
    params = dict(conninfo_to_dict(registry.database))
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    # A database host that vanishes without closing (a partition, a power cut) is noticed
    # in about 20 s on an idle connection, not after the kernel's two hours.
    for name, value in KEEPALIVES.items():
        params.setdefault(name, value)
    params.setdefault("application_name", f"aura {registry.member}"[:63])
    password_file = config.registry_password_file
    if password_file is not None:
        params["password"] = read_password(password_file)
    return make_conninfo("", **params)


def unavailable(config: ServerConfig, error: BaseException) -> DatabaseUnavailable:
    """One line naming the database and libpq's reason (all lines joined, bounded)."""
    assert config.registry is not None
    reason = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if len(reason) > ERROR_LIMIT:
        reason = reason[:ERROR_LIMIT] + "..."
    return DatabaseUnavailable(f"{describe(config.registry.database)} is unavailable: {reason}")


def connect(config: ServerConfig) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(connection_string(config))
    except psycopg.OperationalError as error:
        raise unavailable(config, error) from None


async def connect_async(config: ServerConfig) -> psycopg.AsyncConnection[tuple[object, ...]]:
    """An autocommit connection for the router's event loop."""
    try:
        return await psycopg.AsyncConnection.connect(connection_string(config), autocommit=True)
    except psycopg.OperationalError as error:
        raise unavailable(config, error) from None


# -- schema versions ---------------------------------------------------------------------------
LATEST = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int | None:
    """The schema version the database holds; None before `aura server init --database`."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = row[0] if row else None
    return version if isinstance(version, int) else 0


def migrate(conn: psycopg.Connection[tuple[object, ...]], database: str) -> tuple[int, int]:
    """Apply the missing migrations in one transaction; (version before, version now)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        old = schema_version(conn) or 0
        if old > LATEST:
            raise _newer(database, old)
        for migration in MIGRATIONS[old:]:
            conn.execute(migration.encode())  # bytes: several statements in one
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (LATEST,))
    return old, LATEST


def check_schema(version: int | None, database: str) -> None:
    """Refuse a database this code cannot use, saying what to do."""
    if version is None:
        raise AuraError(f"{describe(database)} has no Aura schema: run "
                        "`aura server init --database CONNSTR` to create it")
    if version > LATEST:
        raise _newer(database, version)
    if version < LATEST:
        raise AuraError(f"{describe(database)} has schema version {version}, this Aura needs "
                        f"{LATEST}: run `aura server init --database CONNSTR` to migrate it")


def _newer(database: str, version: int) -> AuraError:
    return AuraError(f"{describe(database)} has schema version {version}, newer than this Aura "
                     f"knows ({LATEST}): upgrade Aura on this server")
