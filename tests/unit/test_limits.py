"""Client limits: parsing of durations, sizes and dates; the decision with a chosen clock;
the usage ledger; and the router refusing, cutting off and letting back in."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_common.state.client_limits import (
    SAVE_INTERVAL,
    Gate,
    Usage,
    parse_duration,
    parse_expiry,
    parse_size,
    refusal,
)
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.state.timestamps import format_time
from tests.unit.router_fakes import FakeTransport, claim, new_router

NOW = datetime.datetime(2026, 11, 29, 12, 0, 0, tzinfo=datetime.UTC)
GIB = 1024**3


# -- parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 14 * 86400), ("45s", 45),
    ("1d12h", 86400 + 43200), (" 7D ", 7 * 86400),
])  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-3d", "1.5d", "0d", "3d 4h"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(AuraError, match="duration"):
        parse_duration(text)


def test_expiry_forms() -> None:
    assert parse_expiry("30d", NOW) == NOW + datetime.timedelta(days=30)
    assert parse_expiry("2027-01-31", NOW) == datetime.datetime(2027, 1, 31, tzinfo=datetime.UTC)
    assert parse_expiry("2027-01-31T18:00", NOW) == datetime.datetime(
        2027, 1, 31, 18, tzinfo=datetime.UTC)
    assert parse_expiry("2027-01-31T18:00+01:00", NOW) == datetime.datetime(
        2027, 1, 31, 17, tzinfo=datetime.UTC)
    assert parse_expiry("2027-01-31T18:00:00Z", NOW) == datetime.datetime(
        2027, 1, 31, 18, tzinfo=datetime.UTC)
    assert parse_expiry("never", NOW) is None
    assert parse_expiry("None", NOW) is None


@pytest.mark.parametrize("text", ["tomorrow", "2027-13-01", "31/01/2027", "30 days", ""])
def test_bad_expiry_names_the_option_and_the_forms(text: str) -> None:
    with pytest.raises(AuraError, match=r"--expires .*expected a duration such as 30d"):
        parse_expiry(text, NOW)


@pytest.mark.parametrize(("text", "size"), [
    ("50GiB", 50 * GIB), ("500MB", 500 * 1000**2), ("1.5TiB", int(1.5 * 1024**4)),
    ("1000000", 1_000_000), ("12 kib", 12 * 1024), ("3gb", 3 * 1000**3), ("7B", 7),
])  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_no_quota() -> None:
    assert parse_size("none") is None and parse_size("never") is None


@pytest.mark.parametrize("text", ["50G", "GiB", "-5MB", "0", "0.0001B", "5 parsecs", "1e9"])
def test_bad_sizes_name_the_option_and_units(text: str) -> None:
    with pytest.raises(AuraError, match=r"--quota .*expected a size such as 50GiB"):
        parse_size(text)


@given(st.text(max_size=20))
def test_parsers_raise_only_aura_errors(text: str) -> None:
    for parse in (parse_size, lambda t: parse_expiry(t, NOW), parse_duration):
        with contextlib.suppress(AuraError):
            parse(text)


@given(st.integers(1, 10**15), st.sampled_from(["B", "KiB", "MiB", "GiB", "TiB", "KB", "GB"]))
def test_sizes_scale_by_their_unit(count: int, unit: str) -> None:
    factor = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
              "KB": 1000, "GB": 1000**3}[unit]  # fmt: skip
    assert parse_size(f"{count}{unit}") == count * factor


# -- the decision, with an injected clock ---------------------------------------------------
def limited(expires: datetime.datetime | None = None, quota: int | None = None) -> RegisteredPeer:
    return RegisteredPeer("alice", bytes(range(32)), expires=None if expires is None else
                format_time(expires), quota_bytes=quota)  # fmt: skip


def test_expiry_refuses_from_that_second_on() -> None:
    peer = limited(expires=NOW)
    assert refusal(peer, 0, NOW.timestamp() - 1) is None
    assert refusal(peer, 0, NOW.timestamp()) == "expired at 2026-11-29T12:00:00Z"


def test_quota_refuses_once_reached() -> None:
    peer = limited(quota=GIB)
    assert refusal(peer, GIB - 1, NOW.timestamp()) is None
    assert refusal(peer, GIB, NOW.timestamp()) == "quota used up (1.0 GiB of 1.0 GiB)"
    assert refusal(limited(), 10 * GIB, NOW.timestamp()) is None


def test_gate_reports_changes_only(tmp_path: Path) -> None:
    usage = Usage(tmp_path / "usage.json")
    alice = limited(quota=1000)
    bob = dataclasses.replace(limited(expires=NOW), name="bob")
    gate = Gate()
    assert gate.review([alice, bob], usage, NOW.timestamp() - 10) == ({}, [])
    usage.add("alice", 1000)
    newly, lifted = gate.review([alice, bob], usage, NOW.timestamp() - 10)
    assert list(newly) == ["alice"] and lifted == []
    newly, lifted = gate.review([alice, bob], usage, NOW.timestamp())
    assert list(newly) == ["bob"] and lifted == []
    assert gate.review([alice, bob], usage, NOW.timestamp()) == ({}, [])
    raised = dataclasses.replace(alice, quota_bytes=2000)
    assert gate.review([raised, bob], usage, NOW.timestamp()) == ({}, ["alice"])
    assert set(gate.refused) == {"bob"}


# -- the ledger -----------------------------------------------------------------------------
def test_usage_survives_a_reload_and_saves_at_a_bounded_rate(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    usage = Usage.load(path)
    assert usage.get("alice") == 0 and not usage.save_due(0.0)
    usage.add("alice", 1500)
    usage.add("bob", 7)
    assert usage.save_due(0.0)
    usage.save(100.0)
    assert not usage.save_due(100.0 + SAVE_INTERVAL)  # nothing new
    usage.add("alice", 1)
    assert not usage.save_due(100.0 + SAVE_INTERVAL - 1)
    assert usage.save_due(100.0 + SAVE_INTERVAL)
    assert Usage.load(path).get("alice") == 1500 and Usage.load(path).get("bob") == 7
    usage.retain(["alice"])
    usage.save(200.0)
    assert json.loads(path.read_text())["bytes"] == {"alice": 1501}
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


@pytest.mark.parametrize(("text", "key"), [
    ('{"version": 1, "bytes": {"alice": -1}}', "bytes.alice"),
    ('{"version": 1, "bytes": {"alice": "5"}}', "bytes.alice"),
    ('{"version": 1, "bytes": []}', "bytes"),
    ('{"version": 2, "bytes": {}}', "version"),
])  # fmt: skip
def test_damaged_usage_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "usage.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        Usage.load(path)
    assert error.value.key == key


# -- the registry keeps limits --------------------------------------------------------------
def test_registry_round_trips_and_edits_limits(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    with Registry.edit(path) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2",
                          expires="2027-01-31T00:00:00Z", quota_bytes=50 * GIB))
    assert Registry.load(path).get("alice").quota_bytes == 50 * GIB  # type: ignore[union-attr]
    with Registry.edit(path) as registry:
        registry.replace("alice", quota_bytes=None)
    loaded = Registry.load(path)
    alice = loaded.get("alice")
    assert alice is not None and alice.quota_bytes is None
    assert alice.expires == "2027-01-31T00:00:00Z"
    assert loaded.by_address("10.77.0.2") is alice and loaded.by_key(bytes(range(32))) is alice
    with pytest.raises(AuraError, match="no peer named 'carol'"):
        loaded.replace("carol", quota_bytes=1)


@pytest.mark.parametrize(("field", "value"), [
    ("expires", "next week"), ("expires", "2027-01-31T00:00:00"), ("expires", 5),
    ("quota_bytes", 0), ("quota_bytes", "5GiB"), ("quota_bytes", True),
])  # fmt: skip
def test_registry_rejects_bad_limits(tmp_path: Path, field: str, value: object) -> None:
    path = tmp_path / "peers.json"
    with Registry.edit(path) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32))))
    doc = json.loads(path.read_text())
    doc["peers"][0][field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as error:
        Registry.load(path)
    assert error.value.key == f"peers[0].{field}"


# -- the router: refuse, cut off, let back in, remember -------------------------------------
def ipv4_from(source: str, size: int) -> bytes:
    import ipaddress
    import struct

    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0, 64, 17, 0,
                         ipaddress.ip_address(source).packed, bytes([203, 0, 113, 2]))
    return header + bytes(size - len(header))


def test_router_cuts_off_a_peer_at_its_quota_and_remembers_usage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from aura_common.service.log import NOTICE
    from services.router.main import Router

    config = ServerConfig.default("vpn.example", state_dir=str(tmp_path))
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2",
                                    quota_bytes=1000))
        registry.add(RegisteredPeer("bob", bytes(range(1, 33)), address_v4="10.77.0.3"))

    async def scenario() -> None:
        router = new_router(config)
        link = FakeTransport()
        router.transports[link] = "udp"  # type: ignore[index]
        claim(router, link, "alice")
        router._from_transport(link, [("alice", [ipv4_from("10.77.0.2", 600)])])  # type: ignore[arg-type]
        router.check_limits()
        assert router.sessions.get("alice") is not None and not router.gate.refused
        router._from_transport(link, [("alice", [ipv4_from("10.77.0.2", 400)])])  # type: ignore[arg-type]
        with caplog.at_level(logging.INFO, logger="aura-router"):
            router.check_limits()
        await asyncio.sleep(0)
        assert router.sessions.get("alice") is None
        assert link.peers_listed() == ["bob"]  # every transport drops alice's sessions
        refused = [r for r in caplog.records if r.levelno == NOTICE]
        assert [r.getMessage() for r in refused] == [
            "alice refused: quota used up (1000 B of 1000 B)"]
        # packets the transport had in flight are dropped without a warning
        with caplog.at_level(logging.INFO, logger="aura-router"):
            router._from_transport(link, [("alice", [ipv4_from("10.77.0.2", 100)])])  # type: ignore[arg-type]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert router.usage.get("alice") == 1000
        # a transport with a stale list cannot bring the session back
        claim(router, link, "alice", handshake_at=2)
        assert router.sessions.get("alice") is None
        status = {p.name: p for p in router.status().peers}
        assert status["alice"].usage_bytes == 1000 and status["alice"].refused
        assert status["bob"].refused is None and status["bob"].quota_bytes is None
        router.close()

        restarted = Router(config, router.authority)
        assert restarted.usage.get("alice") == 1000 and "alice" in restarted.gate.refused
        restarted.transports[link] = "udp"  # type: ignore[index]
        with Registry.edit(config.peers_file) as registry:
            registry.replace("alice", quota_bytes=2000)
        restarted.reload()
        await asyncio.sleep(0)
        assert link.peers_listed() == ["alice", "bob"]

    asyncio.run(scenario())


def test_router_refuses_an_expired_peer_from_the_start(tmp_path: Path) -> None:

    config = ServerConfig.default("vpn.example", state_dir=str(tmp_path))
    past = format_time(datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1))
    with Registry.edit(config.peers_file) as registry:
        registry.add(RegisteredPeer("alice", bytes(range(32)), address_v4="10.77.0.2",
                                    expires=past))
    router = new_router(config)
    assert router._peers_frame().peers == []
    assert router.gate.refused == {"alice": f"expired at {past}"}


def test_a_failed_save_is_retried_after_the_interval(tmp_path: Path) -> None:
    usage = Usage(tmp_path / "missing" / "usage.json")
    usage.add("alice", 1)
    with pytest.raises((OSError, AuraError)):
        usage.save(10.0)
    assert not usage.save_due(10.0 + SAVE_INTERVAL - 1), "no retry storm"
    assert usage.save_due(10.0 + SAVE_INTERVAL)
