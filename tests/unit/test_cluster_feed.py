"""A cluster member's router follows the shared database: changes made on any member reach
every member within a second (LISTEN/NOTIFY), the database away changes nothing that is
served, a member restarted meanwhile starts from its local copy, and usage counted on each
member adds up in the database. Real PostgreSQL servers started by the test (aura_lab/pg.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aura_common.cluster import database
from aura_common.config import ServerConfig
from aura_common.errors import AuraError
from aura_common.ipc.frames import Peers
from aura_common.pki.keys import load_server_private_key
from aura_common.state.registry import RegisteredPeer, open_store
from aura_common.wireguard import HandshakeAuthority
from aura_lab import pg
from aura_lab.pg import PostgresServer
from services.cli.main import main as aura
from services.router.main import Router
from tests.unit.router_fakes import FakeTransport, claim

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this module's own, which the tests stop and start."""
    reason = pg.unavailable()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


def init_member(folder: Path, server: PostgresServer, conninfo: str | None,
                bundle: Path | None = None, member: str = "a") -> ServerConfig:
    source = ["--join", str(bundle)] if bundle else ["--database", str(conninfo)]
    assert aura(["--config", str(folder / "server.yaml"), "server", "init", *source,
                 "--public-host", f"{member}.example", "--member", member,
                 "--state-dir", str(folder / "state"), "--runtime-dir", str(folder / "run"),
                 "--key-dir", str(folder / "keys"),
                 "--database-password-file", server.password_file]) == 0
    return ServerConfig.load(folder / "server.yaml")


def two_members(tmp_path: Path, server: PostgresServer) -> tuple[ServerConfig, ServerConfig]:
    first = init_member(tmp_path / "a", server, server.new_database())
    bundle = tmp_path / "bundle"
    assert aura(["--config", str(first.path), "cluster", "export", "-o", str(bundle)]) == 0
    return first, init_member(tmp_path / "b", server, None, bundle, member="b")


def cli(config: ServerConfig, *argv: str) -> int:
    return aura(["--config", str(config.path), *argv])


def provision(config: ServerConfig, name: str, *extra: str) -> int:
    out = Path(config.state_dir).parent / f"{name}.yaml"
    return cli(config, "provision-client", name, "-o", str(out), *extra)


async def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` held; fails after `within`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def start(config: ServerConfig) -> tuple[Router, asyncio.Task[None], FakeTransport]:
    router = Router(config, HandshakeAuthority(load_server_private_key(config)))
    transport = FakeTransport()
    router.transports[transport] = "udp"  # type: ignore[index]
    assert router.feed is not None
    return router, asyncio.get_running_loop().create_task(router.feed.run()), transport


def connected(router: Router) -> bool:
    return router.feed is not None and router.feed.connected


async def stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_changes_on_one_member_reach_the_other_within_a_second(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    first, second = two_members(tmp_path, postgres)

    async def scenario() -> None:
        a, a_task, _ = start(first)
        b, b_task, b_transport = start(second)
        try:
            await eventually(lambda: connected(a) and connected(b), 10)
            assert await asyncio.to_thread(provision, first, "alice") == 0
            await eventually(lambda: "alice" in b.registry, 1.0)
            # B answers alice with the preshared key A sealed.
            assert b.registry.get("alice") == open_store(first).load().get("alice")
            claim(b, b_transport, "alice")
            assert b.sessions.get("alice") is not None

            assert await asyncio.to_thread(cli, second, "edit-client", "alice", "--quota",
                                           "5GiB") == 0
            await eventually(lambda: a.registry.get("alice").quota_bytes == 5 * 1024**3,  # type: ignore[union-attr]
                             1.0)
            assert await asyncio.to_thread(cli, first, "revoke-client", "alice") == 0
            await eventually(lambda: b.sessions.get("alice") is None, 1.0)
            assert "alice" not in b.registry

            def last_peers() -> list[str] | None:
                pushed = [f for f in b_transport.frames if isinstance(f, Peers)]
                return None if not pushed else [p.name for p in pushed[-1].peers]

            # The transport is told too (pushes queued before the revocation may come first).
            await eventually(lambda: last_peers() == [], 1.0)
            registry = b.status().registry
            assert registry is not None and registry.connected is True
        finally:
            await stop(a_task, b_task)

    asyncio.run(scenario())


def test_database_away_serves_what_is_known_refuses_changes_and_catches_up(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    config = init_member(tmp_path / "a", own_postgres, own_postgres.new_database())
    assert provision(config, "alice") == 0

    async def scenario() -> None:
        router, task, _ = start(config)
        try:
            await eventually(lambda: connected(router) and "alice" in router.registry, 10)
            await eventually(lambda: Path(config.registry_copy_file).exists(), 3)
            await asyncio.to_thread(own_postgres.stop)
            await eventually(lambda: not connected(router), 10)
            assert "alice" in router.registry
            registry = router.status().registry
            assert registry is not None and registry.source == "copy"
            with pytest.raises(database.DatabaseUnavailable, match=r"^the registry database"):
                open_store(config).load()
            assert await asyncio.to_thread(provision, config, "bob") != 0

            # A member restarted now starts from its copy.
            restarted = Router(config, router.authority)
            assert "alice" in restarted.registry

            await asyncio.to_thread(own_postgres.start)
            await eventually(lambda: connected(router), 15)
            assert await asyncio.to_thread(provision, config, "carol") == 0
            await eventually(lambda: "carol" in router.registry, 1.0)
        finally:
            await stop(task)
            if not own_postgres.running:
                own_postgres.start()

    asyncio.run(scenario())


def test_usage_adds_up_across_members_and_survives_the_database_away(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    first, second = two_members(tmp_path, own_postgres)
    assert provision(first, "alice") == 0

    async def scenario() -> None:
        a, a_task, _ = start(first)
        b, b_task, _ = start(second)
        try:
            await eventually(lambda: connected(a) and connected(b), 10)
            a.usage.add("alice", 1000)
            b.usage.add("alice", 500)
            await eventually(lambda: a.usage.get("alice") == b.usage.get("alice") == 1500, 5)

            await asyncio.to_thread(own_postgres.stop)
            await eventually(lambda: not connected(a), 10)
            a.usage.add("alice", 200)
            assert a.usage.get("alice") == 1700  # counted on, also while away
            a.usage.save(time.monotonic())
        finally:
            await stop(a_task, b_task)
        # A restarted while the database is away keeps what it had not flushed.
        await asyncio.to_thread(own_postgres.start)
        restarted, task, _ = start(first)
        try:
            await eventually(lambda: connected(restarted), 15)
            await eventually(lambda: restarted.usage.get("alice") == 1700, 5)
            assert open_store(first).load().get("alice") is not None
        finally:
            await stop(task)

    asyncio.run(scenario())


def test_dynamic_leases_never_collide_between_members(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    conninfo = postgres.new_database()
    folder = tmp_path / "a"
    assert aura(["--config", str(folder / "server.yaml"), "server", "init", "--database",
                 conninfo, "--strategy", "dynamic", "--public-host", "a.example",
                 "--member", "a", "--state-dir", str(folder / "state"), "--runtime-dir",
                 str(folder / "run"), "--key-dir", str(folder / "keys"),
                 "--database-password-file", postgres.password_file]) == 0
    first = ServerConfig.load(folder / "server.yaml")
    bundle = tmp_path / "bundle"
    assert aura(["--config", str(first.path), "cluster", "export", "-o", str(bundle)]) == 0
    second = init_member(tmp_path / "b", postgres, None, bundle, member="b")
    assert second.network.strategy == "dynamic"
    with open_store(first).edit() as registry:
        for index in range(40):
            registry.add(RegisteredPeer(name=f"p{index}", public_key=bytes([index + 1]) * 32))

    async def scenario() -> None:
        a, a_task, _ = start(first)
        b, b_task, _ = start(second)
        try:
            await eventually(lambda: len(a.registry) == len(b.registry) == 40, 10)
            await eventually(lambda: bool(a.feed.blocks) and bool(b.feed.blocks), 10)  # type: ignore[union-attr]
            leased: dict[str, str] = {}
            for index in range(40):
                router = a if index % 2 else b
                name = f"p{index}"
                for _ in range(400):  # a member claims another block every 2 s as it fills
                    try:
                        address = router._addresses_for(router.registry.get(name))[0]  # type: ignore[arg-type]
                        break
                    except AuraError:
                        await asyncio.sleep(0.05)
                assert address not in leased.values(), (name, address, leased)
                leased[name] = address
            assert a.feed.blocks.isdisjoint(b.feed.blocks)  # type: ignore[union-attr]
            assert len(a.feed.blocks) >= 2  # type: ignore[union-attr]
        finally:
            await stop(a_task, b_task)

    asyncio.run(scenario())


def test_a_database_of_a_newer_schema_is_refused_and_the_copy_served(
    tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = init_member(tmp_path / "a", postgres, postgres.new_database())
    assert provision(config, "alice") == 0
    dbname = config.registry.database.split("dbname=")[1].split()[0]  # type: ignore[union-attr]

    async def scenario() -> None:
        router, task, _ = start(config)
        try:
            await eventually(lambda: connected(router), 10)
            await eventually(lambda: Path(config.registry_copy_file).exists(), 3)
        finally:
            await stop(task)
        with postgres.superuser(dbname) as conn:
            conn.execute("UPDATE schema_version SET version = version + 1")
        router, task, _ = start(config)
        try:
            await asyncio.sleep(1.5)
            assert not connected(router) and "alice" in router.registry
        finally:
            await stop(task)

    with caplog.at_level("WARNING", logger="aura-router"):
        asyncio.run(scenario())
    assert "newer than this Aura knows" in caplog.text


def test_a_damaged_copy_does_not_keep_a_member_from_starting(
    tmp_path: Path, postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = init_member(tmp_path / "a", postgres, postgres.new_database())
    assert provision(config, "alice") == 0
    Path(config.registry_copy_file).write_text('{"version": 1, "peers": [{"name": 5}]}')

    async def scenario() -> None:
        with caplog.at_level("WARNING", logger="aura-router"):
            router, task, _ = start(config)
        assert "ignoring the damaged registry copy" in caplog.text
        try:
            await eventually(lambda: "alice" in router.registry, 10)
            await eventually(lambda: "alice" in Path(config.registry_copy_file).read_text(), 3)
        finally:
            await stop(task)

    asyncio.run(scenario())


def test_a_reload_as_the_router_stops_does_not_keep_the_feed_running(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """A wake-up (reload, notification) that comes as the feed is cancelled must not cost the
    cancellation: the feed ends, so does the router's event loop. (asyncio.wait_for on
    Python 3.11 returned the finished wake-up instead, and the feed ran on for ever.)"""
    config = init_member(tmp_path / "a", postgres, postgres.new_database())

    async def scenario() -> None:
        for _ in range(3):  # idle between its reads nearly all the time: caught there
            router, task, _ = start(config)
            try:
                await eventually(functools.partial(connected, router), 10)
                await asyncio.sleep(0.2)
                assert router.feed is not None
                router.feed.refresh()
                task.cancel()
                done, _ = await asyncio.wait([task], timeout=5)
                assert done, "the feed kept running after it was cancelled"
            finally:
                await stop(task)

    asyncio.run(scenario())
