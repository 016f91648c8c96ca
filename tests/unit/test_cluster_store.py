"""The registry in PostgreSQL: `aura server init --database`, provisioning from the CLI,
sealed preshared keys, unique addresses under concurrent edits, notifications, and rows that
must be validated like a file. Against a real server the test starts (aura_lab/pg.py)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import yaml

from aura_common.cluster import database
from aura_common.cluster.seal import SEALED_SIZE
from aura_common.cluster.store import DatabaseStore
from aura_common.config import ServerConfig, decode_key
from aura_common.errors import AuraError, ConfigError
from aura_common.state.pool import AddressPool
from aura_common.state.registry import RegisteredPeer, open_store
from aura_lab.pg import PostgresServer
from services.cli.main import main as aura

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresServer) -> tuple[ServerConfig, PostgresServer]:
    """A server initialised with `aura server init --database` on a fresh database."""
    path = tmp_path / "server.yaml"
    code = aura(["--config", str(path), "server", "init", "--public-host", "vpn.example",
                 "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run"),
                 "--key-dir", str(tmp_path / "keys"), "--database", postgres.new_database(),
                 "--database-password-file", postgres.password_file])
    assert code == 0
    return ServerConfig.load(path), postgres


def provision(config: ServerConfig, name: str, *extra: str) -> dict[str, object]:
    output = Path(config.state_dir).parent / f"{name}.yaml"
    assert aura(["--config", str(config.path), "provision-client", name, "-o", str(output),
                 *extra]) == 0
    document: dict[str, object] = yaml.safe_load(output.read_text().split("\n", 1)[1])
    return document


def test_init_creates_schema_cluster_key_and_no_peer_file(
    cluster: tuple[ServerConfig, PostgresServer], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = cluster
    assert config.registry is not None
    assert config.registry.member == "vpn.example"
    assert Path(config.key_dir, "cluster.key").stat().st_mode & 0o777 == 0o600
    assert not Path(config.peers_file).exists()
    with database.connect(config) as conn:
        assert database.schema_version(conn) == database.LATEST
    capsys.readouterr()
    assert aura(["--config", str(config.path), "server", "init", "--public-host", "x"]) == 0
    assert "schema version 1, up to date" in capsys.readouterr().out


def test_provision_edit_revoke_and_list_go_to_the_database(
    cluster: tuple[ServerConfig, PostgresServer], capsys: pytest.CaptureFixture[str]
) -> None:
    config, postgres = cluster
    alice = provision(config, "alice", "--quota", "1GiB")
    provision(config, "bob")
    with postgres.superuser(config.registry.database.split("dbname=")[1].split()[0]) as conn:  # type: ignore[union-attr]
        rows = {name: address for name, address in conn.execute(
            "SELECT name, host(address_v4) FROM peers ORDER BY name").fetchall()}
        sealed = conn.execute("SELECT preshared_key FROM peers WHERE name = 'alice'").fetchone()
    assert rows == {"alice": "10.77.0.2", "bob": "10.77.0.3"}
    # The database holds the preshared key sealed, not the one in the client's config.
    psk = decode_key(alice["server"]["preshared_key"])  # type: ignore[index]
    assert sealed is not None and isinstance(sealed[0], bytes)
    assert len(sealed[0]) == SEALED_SIZE and psk not in sealed[0]
    assert open_store(config).load().get("alice").preshared_key == psk  # type: ignore[union-attr]

    assert aura(["--config", str(config.path), "edit-client", "alice", "--quota", "2GiB"]) == 0
    assert aura(["--config", str(config.path), "revoke-client", "bob"]) == 0
    registry = open_store(config).load()
    assert [p.name for p in registry] == ["alice"]
    assert registry.get("alice").quota_bytes == 2 * 1024**3  # type: ignore[union-attr]
    capsys.readouterr()
    assert aura(["--config", str(config.path), "list-clients"]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "bob" not in out
    assert not Path(config.peers_file).exists()


def test_concurrent_provisioning_from_members_never_shares_an_address(
    cluster: tuple[ServerConfig, PostgresServer],
) -> None:
    config, _ = cluster
    pool = AddressPool(config.network.ipv4, config.network.ipv6)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def member(index: int) -> None:
        store = DatabaseStore(config)
        start.wait()
        try:
            with store.edit() as registry:
                v4, v6 = pool.next_free(registry.taken_addresses())
                registry.add(RegisteredPeer(name=f"p{index}", public_key=bytes([index + 1]) * 32,
                                  address_v4=v4, address_v6=v6))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    addresses = [p.address_v4 for p in DatabaseStore(config).load()]
    assert len(addresses) == 8 and len(set(addresses)) == 8


def test_the_database_refuses_a_duplicate_address_itself(
    cluster: tuple[ServerConfig, PostgresServer],
) -> None:
    config, _ = cluster
    provision(config, "alice")
    refused = (r"the registry database \(.*\) refused the change: "
               r"Key \(address_v4\)=\(10\.77\.0\.2\) already exists")
    with pytest.raises(AuraError, match=refused), DatabaseStore(config).edit() as registry:
        # What a member working from a stale view would write: the constraint still holds.
        registry.add(RegisteredPeer(name="bob", public_key=b"\x02" * 32))
        registry.replace("bob", address_v4="10.77.0.2")


def test_every_change_is_notified_with_the_peer_name(
    cluster: tuple[ServerConfig, PostgresServer],
) -> None:
    config, _ = cluster
    with database.connect(config) as listener:
        listener.autocommit = True
        listener.execute("LISTEN aura_registry")
        provision(config, "alice")
        assert aura(["--config", str(config.path), "edit-client", "alice", "--expires",
                     "30d"]) == 0
        assert aura(["--config", str(config.path), "revoke-client", "alice"]) == 0
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=3)]
    assert payloads == ["alice", "alice", "alice"]


def test_another_cluster_key_cannot_open_the_preshared_keys(
    cluster: tuple[ServerConfig, PostgresServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, _ = cluster
    provision(config, "alice")
    handed = tmp_path / "creds"
    handed.mkdir()
    (handed / "cluster.key").write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(handed))
    with pytest.raises(AuraError, match="peer alice: its preshared key does not open with "
                                        "this server's cluster key"):
        DatabaseStore(config).load()


@pytest.mark.parametrize(("column", "value", "key"), [
    ("expires", "next tuesday", "peers[alice].expires"),
    ("created", "x" * 65, "peers[alice].created"),
])
def test_rows_are_validated_like_the_file(
    cluster: tuple[ServerConfig, PostgresServer], column: str, value: str, key: str,
) -> None:
    config, postgres = cluster
    provision(config, "alice")
    dbname = config.registry.database.split("dbname=")[1].split()[0]  # type: ignore[union-attr]
    with postgres.superuser(dbname) as conn:
        conn.execute(f"ALTER TABLE peers DROP CONSTRAINT IF EXISTS peers_{column}_check")
        conn.execute(f"UPDATE peers SET {column} = %s", (value,))
    with pytest.raises(ConfigError, match=rf"the registry database \(.*\): {re.escape(key)}: "):
        DatabaseStore(config).load()


def test_database_away_refuses_changes_naming_it(
    cluster: tuple[ServerConfig, PostgresServer],
) -> None:
    config, _ = cluster
    broken = ServerConfig.from_mapping(
        {"version": 1, "public_host": "vpn.example", "key_dir": config.key_dir,
         "state_dir": config.state_dir,
         "registry": {"database": config.registry.database.replace(  # type: ignore[union-attr]
             "port=", "port=1"), "password_file": config.registry.password_file}},  # type: ignore[union-attr]
        str(config.path))
    away = r"^the registry database \(.*port=1"
    with pytest.raises(database.DatabaseUnavailable, match=away), DatabaseStore(broken).edit():
        pass


def test_psycopg_is_not_imported_without_a_registry() -> None:
    import subprocess
    import sys

    code = ("import sys; from services.cli import main; from services.router import main as r; "
            "print('psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_export_and_join_make_one_logical_server(
    cluster: tuple[ServerConfig, PostgresServer], tmp_path: Path,
) -> None:
    first, postgres = cluster
    provision(first, "alice")
    bundle_path = tmp_path / "bundle"
    target = tmp_path / "elsewhere"
    target.write_text("not to be touched\n")
    bundle_path.symlink_to(target)  # replaced, never followed
    assert aura(["--config", str(first.path), "cluster", "export", "-o", str(bundle_path)]) == 0
    assert target.read_text() == "not to be touched\n"
    assert not bundle_path.is_symlink() and bundle_path.stat().st_mode & 0o777 == 0o600

    second_dir = tmp_path / "b"
    assert aura(["--config", str(second_dir / "server.yaml"), "server", "init", "--join",
                 str(bundle_path), "--public-host", "b.example", "--member", "b",
                 "--state-dir", str(second_dir / "state"), "--runtime-dir",
                 str(second_dir / "run"), "--key-dir", str(second_dir / "keys"),
                 "--database-password-file", postgres.password_file]) == 0
    second = ServerConfig.load(second_dir / "server.yaml")
    assert second.registry is not None and first.registry is not None
    assert (second.registry.database, second.registry.member) == (first.registry.database, "b")
    assert second.network == first.network and second.public_host == "b.example"
    for name in ("server.key", "ca.key", "ca.pub", "tls.crt", "tls.key", "cluster.key"):
        assert Path(second.key_dir, name).read_bytes() == Path(first.key_dir, name).read_bytes()
        private = name.endswith(".key")
        assert Path(second.key_dir, name).stat().st_mode & 0o777 == (0o600 if private else 0o644)
    # The second member opens the preshared keys the first one sealed.
    alice = open_store(second).load().get("alice")
    assert alice is not None and alice == open_store(first).load().get("alice")
    assert alice.preshared_key is not None


def test_join_refuses_to_replace_a_different_identity(
    cluster: tuple[ServerConfig, PostgresServer], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, _ = cluster
    bundle_path = tmp_path / "bundle"
    assert aura(["--config", str(first.path), "cluster", "export", "-o", str(bundle_path)]) == 0
    keys = tmp_path / "b" / "keys"
    keys.mkdir(parents=True)
    (keys / "server.key").write_text("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
    assert aura(["--config", str(tmp_path / "b" / "server.yaml"), "server", "init", "--join",
                 str(bundle_path), "--public-host", "b.example", "--key-dir", str(keys),
                 "--state-dir", str(tmp_path / "b" / "state")]) != 0
    assert "server.key exists and differs from the bundle's" in capsys.readouterr().err
    assert not (tmp_path / "b" / "server.yaml").exists()
