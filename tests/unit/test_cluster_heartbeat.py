"""Member heartbeats against a real PostgreSQL server (aura_lab/pg.py): a router publishes, the
CLI reads every member back, a silent member shows as down, and the database away is a
warning and a retry, never a crash."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.cluster import database, presence
from aura_common.cluster.presence import LiveSession, cluster_members
from aura_common.config import ServerConfig
from aura_common.errors import AuraError
from aura_common.pki.manifest import HostPorts, Manifest, SignedManifest, sign
from aura_common.state import runtime
from aura_lab.pg import PostgresServer
from services.cli.main import main as aura
from services.router import heartbeat

pytestmark = pytest.mark.postgres


class FakeRouter:
    """What the heartbeat reads from a router: its live transports and sessions."""

    def __init__(self, manifest: SignedManifest | None = None) -> None:
        self.transports = {"udp"}
        self.sessions = [LiveSession("alice", "udp", "198.51.100.7:40000", 1_000.0)]
        self.manifest = manifest
        self.adopted: list[SignedManifest] = []

    def adopt_manifest(self, signed: SignedManifest) -> None:
        self.adopted.append(signed)

    def live_transports(self) -> set[str]:
        return self.transports

    def live_sessions(self) -> list[LiveSession]:
        return self.sessions


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(presence, "HEARTBEAT_INTERVAL", 0.05)
    monkeypatch.setattr(heartbeat, "RETRY_FIRST", 0.05)


@pytest.fixture
def members(tmp_path: Path, postgres: PostgresServer) -> Iterator[list[ServerConfig]]:
    """Two members, `a` and `b`, of one cluster database; each has a runtime file."""
    conninfo = postgres.new_database()
    configs = []
    for name, port in (("a", 8443), ("b", 9443)):
        folder = tmp_path / name
        path = folder / "server.yaml"
        assert aura(["--config", str(path), "server", "init", "--public-host", f"{name}.example",
                     "--state-dir", str(folder / "state"), "--runtime-dir", str(folder / "run"),
                     "--database", conninfo, "--database-password-file",
                     postgres.password_file, "--member", name]) == 0
        config = ServerConfig.load(path)
        runtime.record_bound(config.transports_dir, "udp", [f"[::]:{port}"], False)
        runtime.record_bound(config.transports_dir, "tcp", [f"[::]:{port}"], False)
        configs.append(config)
    yield configs


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def has_row(config: ServerConfig, name: str) -> bool:
    return name in read(config)


def read(config: ServerConfig) -> dict[str, presence.Member]:
    return {member.name: member for member in cluster_members(config)}


def test_members_publish_their_endpoints_and_sessions_and_a_silent_one_shows_down(
    members: list[ServerConfig], monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = members
    router_a, router_b = FakeRouter(), FakeRouter()
    router_b.sessions = []

    async def scenario() -> None:
        task_a = asyncio.create_task(heartbeat.publish_forever(a, router_a))
        task_b = asyncio.create_task(heartbeat.publish_forever(b, router_b))
        await until(lambda: set(read(a)) == {"a", "b"}, "both rows")
        seen = read(b)["a"]
        assert seen.up and seen.public_host == "a.example"
        # tcp is bound but not connected to the router: not listed, not in the endpoint.
        assert str(seen.endpoint) == "a.example:udp=8443"
        assert seen.transports == {"udp": ("[::]:8443",)}
        assert seen.sessions == tuple(router_a.sessions) and seen.sessions_total == 1
        # A change reaches the row with the next heartbeat.
        router_a.transports = {"udp", "tcp"}
        router_a.sessions = []
        await until(lambda: read(b)["a"].sessions_total == 0, "the session gone")
        assert str(read(b)["a"].endpoint) == "a.example:udp=8443:tcp=8443"
        # Unchanged: only the time moves (the row is not rewritten), so a stays up.
        await asyncio.sleep(0.3)
        assert read(b)["a"].silent_for < 0.3
        # a stops (killed): after DOWN_AFTER of silence it is down; b is still up.
        monkeypatch.setattr(presence, "DOWN_AFTER", 0.5)
        task_a.cancel()
        await until(lambda: not read(b)["a"].up, "a shown down")
        assert read(a)["b"].up
        task_b.cancel()

    asyncio.run(scenario())


def test_every_member_is_handed_the_newest_manifest_any_member_published(
    members: list[ServerConfig],
) -> None:
    a, b = members
    key = ed25519.Ed25519PrivateKey.generate()
    newest = sign(Manifest.create(serial=5, issued=datetime.datetime.now(datetime.UTC),
                                  expires_days=3, server_public_key=bytes(32),
                                  endpoints=[HostPorts("a.example", udp=8443)]), key)
    router_a, router_b = FakeRouter(newest), FakeRouter()

    async def scenario() -> None:
        tasks = [asyncio.create_task(heartbeat.publish_forever(a, router_a)),
                 asyncio.create_task(heartbeat.publish_forever(b, router_b))]
        await until(lambda: bool(router_b.adopted), "b handed a's manifest")
        for task in tasks:
            task.cancel()

    asyncio.run(scenario())
    assert router_b.adopted[-1] == newest


def test_status_cluster_lists_every_member_human_and_json(
    members: list[ServerConfig], capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = members

    async def publish_once() -> None:
        for name, config in zip("ab", members, strict=True):
            task = asyncio.create_task(heartbeat.publish_forever(config, FakeRouter()))
            await until(functools.partial(has_row, a, name), f"{name}'s row")
            task.cancel()

    asyncio.run(publish_once())
    capsys.readouterr()
    assert aura(["--config", str(b.path), "status", "--cluster", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [(m["name"], m["up"], m["sessions_total"]) for m in document["members"]] == [
        ("a", True, 1), ("b", True, 1)]
    assert document["members"][1]["endpoint"] == {"host": "b.example", "udp": 9443}
    assert aura(["--config", str(a.path), "status", "--cluster"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("cluster: 2 members, 2 up, 2 live sessions")
    assert "b: up" in text and "alice" in text


def test_the_database_away_is_one_warning_and_retries_then_the_heartbeat_resumes(
    members: list[ServerConfig], postgres: PostgresServer, caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    a, _ = members
    # The same member pointed at a port where nothing listens: the database is away.
    document = yaml.safe_load(Path(str(a.path)).read_text())
    good = document["registry"]["database"]
    document["registry"]["database"] = good.replace(f"port={postgres.port}", "port=1")
    away_path = tmp_path / "away.yaml"
    away_path.write_text(yaml.safe_dump(document))
    away = ServerConfig.load(away_path)

    async def scenario() -> None:
        task = asyncio.create_task(heartbeat.publish_forever(away, FakeRouter()))
        await asyncio.sleep(0.5)
        assert not task.done()  # still retrying
        task.cancel()

    with caplog.at_level(logging.WARNING, logger="aura-router"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "the registry database" in warnings[0] and "port=1" in warnings[0]
    with pytest.raises(AuraError, match=r"the registry database \(.*port=1.*\) is unavailable"):
        cluster_members(away)
    assert aura(["--config", str(away_path), "status", "--cluster"]) != 0
    # The row is removed behind the heartbeat's back: it is written again in full.
    with database.connect(a) as conn:
        conn.execute("DELETE FROM members")
        conn.commit()

    async def rewritten() -> None:
        task = asyncio.create_task(heartbeat.publish_forever(a, FakeRouter()))
        await until(lambda: "a" in read(a), "a's row")
        with database.connect(a) as conn:
            conn.execute("DELETE FROM members")
            conn.commit()
        await until(lambda: "a" in read(a), "a's row again")
        task.cancel()

    asyncio.run(rewritten())
