"""The registry database: connection strings, the password, schema versions and migrations.

Tests marked `postgres` run against a real PostgreSQL server the test starts (aura_lab/pg.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aura_common.cluster import database
from aura_common.cluster.schema import MIGRATIONS
from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_lab.pg import PASSWORD, PostgresServer


def cluster_config(tmp_path: Path, conninfo: str, password_file: str | None) -> ServerConfig:
    registry: dict[str, object] = {"database": conninfo, "member": "a.example"}
    if password_file is not None:
        registry["password_file"] = password_file
    return ServerConfig.from_mapping(
        {"version": 1, "public_host": "vpn.example", "state_dir": str(tmp_path / "state"),
         "key_dir": str(tmp_path / "keys"), "registry": registry},
        str(tmp_path / "server.yaml"),
    )


# -- config ------------------------------------------------------------------------------------
def test_no_registry_section_means_the_file_registry() -> None:
    config = ServerConfig.from_mapping({"version": 1, "public_host": "vpn.example"})
    assert config.registry is None
    assert "registry" not in config.dump()


def test_registry_section_round_trips_and_defaults_member_to_public_host() -> None:
    config = ServerConfig.from_mapping({
        "version": 1, "public_host": "vpn.example",
        "registry": {"database": "host=db1,db2 dbname=aura target_session_attrs=read-write"},
    })
    assert config.registry is not None
    assert config.registry.member == "vpn.example"
    assert config.registry.password_file is None
    import yaml

    assert ServerConfig.from_mapping(yaml.safe_load(config.dump())) == config


@pytest.mark.parametrize("conninfo", [
    "host=db1 password=hunter2 dbname=aura",
    "host=db1 dbname=aura password='with space'",
])
def test_a_password_in_the_connection_string_is_refused(conninfo: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServerConfig.from_mapping(
            {"version": 1, "public_host": "h", "registry": {"database": conninfo}},
            "/etc/aura/server.yaml")
    message = str(caught.value)
    assert message.startswith("/etc/aura/server.yaml: registry.database: expected no password=")
    assert "password_file" in message
    assert "\n" not in message


def test_a_broken_connection_string_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"registry\.database: expected a libpq connection"):
        ServerConfig.from_mapping(
            {"version": 1, "public_host": "h", "registry": {"database": "host='db1"}})


def test_password_file_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match=r"registry\.password_file: expected an absolute path"):
        ServerConfig.from_mapping({"version": 1, "public_host": "h", "registry": {
            "database": "host=db1", "password_file": "db.password"}})


def test_password_comes_from_the_credential_before_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = cluster_config(tmp_path, "host=db1", "/etc/aura/registry.password")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert config.registry_password_file == "/etc/aura/registry.password"
    (tmp_path / "creds").mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    assert config.registry_password_file == "/etc/aura/registry.password"  # none handed
    (tmp_path / "creds" / "registry-password").write_text("s3cret\n")
    assert config.registry_password_file == str(tmp_path / "creds" / "registry-password")
    assert "password='s3cret'" in database.connection_string(config) or \
        "password=s3cret" in database.connection_string(config)


def test_password_file_first_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret \\x\r\nignored\n")
    assert database.read_password(str(path)) == "s3cret \\x"


@pytest.mark.parametrize("content", [b"", b"\n", b"x" * (database.PASSWORD_LIMIT + 1)])
def test_password_file_empty_or_huge_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "pw"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{path}: expected one line of 1 to 1024 bytes"):
        database.read_password(str(path))


def test_password_file_symlink_or_missing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("pw\n")
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(ConfigError, match="expected a readable password file"):
        database.read_password(str(tmp_path / "link"))
    with pytest.raises(ConfigError, match="expected a readable password file"):
        database.read_password(str(tmp_path / "missing"))


def test_messages_name_the_database_never_the_password() -> None:
    shown = database.describe("host=db1,db2 port=5433 dbname=aura user=aura sslmode=require")
    assert shown == "the registry database (host=db1,db2 port=5433 dbname=aura)"


# -- a real server -------------------------------------------------------------------------------
@pytest.mark.postgres
def test_connect_with_the_password_file(tmp_path: Path, postgres: PostgresServer) -> None:
    config = cluster_config(tmp_path, postgres.new_database(), postgres.password_file)
    with database.connect(config) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("aura",)


@pytest.mark.postgres
def test_a_wrong_or_missing_password_is_one_line_naming_the_database(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-" + PASSWORD + "\n")
    conninfo = postgres.new_database()
    for password_file in (str(wrong), None):
        config = cluster_config(tmp_path, conninfo, password_file)
        with pytest.raises(database.DatabaseUnavailable) as caught:
            database.connect(config)
        message = str(caught.value)
        assert message.startswith(f"the registry database (host={postgres.socket_dir} ")
        assert "\n" not in message
        assert PASSWORD not in message


@pytest.mark.postgres
def test_multi_host_string_whose_first_host_is_down_still_connects(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    conninfo = postgres.new_database().replace(
        f"host={postgres.socket_dir}", f"host={tmp_path}/nothing-here,{postgres.socket_dir}"
    ) + " target_session_attrs=read-write"
    config = cluster_config(tmp_path, conninfo, postgres.password_file)
    with database.connect(config) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.postgres
def test_migrate_creates_then_is_a_no_op_and_checks_versions(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    conninfo = postgres.new_database()
    config = cluster_config(tmp_path, conninfo, postgres.password_file)
    with database.connect(config) as conn:
        assert database.schema_version(conn) is None
        with pytest.raises(AuraError, match=r"has no Aura schema: run `aura server init"):
            database.check_schema(database.schema_version(conn), conninfo)
        assert database.migrate(conn, conninfo) == (0, len(MIGRATIONS))
        assert database.migrate(conn, conninfo) == (len(MIGRATIONS), len(MIGRATIONS))
        database.check_schema(database.schema_version(conn), conninfo)
        tables = {row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        assert {"schema_version", "peers", "usage", "lease_blocks", "members"} <= tables

        conn.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS) + 1,))
        conn.commit()
        newer = database.schema_version(conn)
        with pytest.raises(AuraError, match=r"newer than this Aura knows.*upgrade Aura"):
            database.check_schema(newer, conninfo)
        with pytest.raises(AuraError, match="newer than this Aura knows"):
            database.migrate(conn, conninfo)
        with pytest.raises(AuraError, match=r"schema version 0, this Aura needs .* to migrate"):
            database.check_schema(0, conninfo)


@pytest.mark.postgres
def test_an_older_schema_is_migrated_forward(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    conninfo = postgres.new_database()
    config = cluster_config(tmp_path, conninfo, postgres.password_file)
    extra = "CREATE TABLE later_feature (id integer);"
    with database.connect(config) as conn:
        database.migrate(conn, conninfo)
        monkeypatch.setattr(database, "MIGRATIONS", (*MIGRATIONS, extra))
        monkeypatch.setattr(database, "LATEST", len(MIGRATIONS) + 1)
        with pytest.raises(AuraError, match="to migrate it"):
            database.check_schema(database.schema_version(conn), conninfo)
        assert database.migrate(conn, conninfo) == (len(MIGRATIONS), len(MIGRATIONS) + 1)
        assert conn.execute("SELECT to_regclass('later_feature') IS NOT NULL").fetchone() == (
            True,)


def test_server_down_is_one_line(tmp_path: Path) -> None:
    config = cluster_config(tmp_path, f"host={tmp_path} port=5999 dbname=aura user=aura", None)
    with pytest.raises(database.DatabaseUnavailable) as caught:
        database.connect(config)
    assert str(caught.value).startswith(f"the registry database (host={tmp_path} port=5999 "
                                        "dbname=aura) is unavailable: ")
    assert "\n" not in str(caught.value)
