"""The peer registry file: adding, revoking, lookups, locked edits and damaged files."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aura_common.errors import AuraError, ConfigError
from aura_common.state.registry import RegisteredPeer, Registry, parse_peers
from tests.unit.strategies import json_values


def peer(name: str, index: int, psk: bool = False) -> RegisteredPeer:
    return RegisteredPeer(
        name=name,
        public_key=bytes([index]) * 32,
        preshared_key=bytes([100 + index]) * 32 if psk else None,
        address_v4=f"10.77.0.{index + 1}",
        address_v6=f"fd77:7777::{index + 1:x}",
    )


def test_missing_file_is_an_empty_registry(tmp_path: Path) -> None:
    registry = Registry.load(tmp_path / "peers.json")
    assert list(registry) == []
    assert len(registry) == 0


def test_add_save_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "peers.json"
    with Registry.edit(path) as registry:
        registry.add(peer("alice", 1, psk=True))
        registry.add(peer("bob", 2))
    loaded = Registry.load(path)
    assert [p.name for p in loaded] == ["alice", "bob"]
    alice = loaded.get("alice")
    assert alice is not None
    assert alice.public_key == bytes([1]) * 32
    assert alice.preshared_key == bytes([101]) * 32
    assert (alice.address_v4, alice.address_v6, alice.enabled) == (
        "10.77.0.2",
        "fd77:7777::2",
        True,
    )
    assert loaded.by_key(bytes([2]) * 32) == loaded.get("bob")
    assert loaded.by_address("fd77:7777:0::3") == loaded.get("bob")
    assert loaded.taken_addresses() == {"10.77.0.2", "fd77:7777::2", "10.77.0.3", "fd77:7777::3"}
    # It holds preshared keys: only the owner may read it.
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_duplicates_are_refused_with_clear_errors(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "peers.json")
    registry.add(peer("alice", 1))
    with pytest.raises(AuraError, match="named 'alice' already exists"):
        registry.add(peer("alice", 2))
    with pytest.raises(AuraError, match="'alice' already uses this public key"):
        registry.add(RegisteredPeer("carol", bytes([1]) * 32))
    with pytest.raises(AuraError, match=r"address 10\.77\.0\.2 already belongs to peer 'alice'"):
        registry.add(RegisteredPeer("dave", bytes([9]) * 32, address_v4="10.77.0.2"))
    for bad in ("Alice", "-x", "a" * 33, "", "a b"):
        with pytest.raises(AuraError, match="invalid peer name"):
            registry.add(RegisteredPeer(bad, bytes([7]) * 32))
    with pytest.raises(AuraError, match="32 bytes"):
        registry.add(RegisteredPeer("short", b"x" * 31))


def test_revoke_removes_everything_about_the_peer(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    with Registry.edit(path) as registry:
        registry.add(peer("alice", 1, psk=True))
        registry.add(peer("bob", 2))
    with Registry.edit(path) as registry:
        revoked = registry.revoke("alice")
    assert revoked.name == "alice"
    loaded = Registry.load(path)
    assert "alice" not in loaded
    assert loaded.by_key(bytes([1]) * 32) is None
    assert loaded.by_address("10.77.0.2") is None
    assert "alice" not in path.read_text()
    # The freed key and address can be used again.
    with Registry.edit(path) as registry:
        registry.add(RegisteredPeer("alice2", bytes([1]) * 32, address_v4="10.77.0.2"))
    with pytest.raises(AuraError, match="no peer named 'zed'"):
        Registry.load(path).revoke("zed")


def test_edit_saves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    with Registry.edit(path) as registry:
        registry.add(peer("alice", 1))
    with pytest.raises(AuraError), Registry.edit(path) as registry:
        registry.add(peer("bob", 2))
        registry.add(peer("bob", 3))
    assert [p.name for p in Registry.load(path)] == ["alice"]


def _add_many(path: str, start: int) -> None:
    for i in range(start, start + 10):
        with Registry.edit(path) as registry:
            registry.add(RegisteredPeer(f"p{i}", bytes([i]) * 32))


def test_concurrent_edits_from_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "peers.json")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_many, args=(path, s)) for s in (0, 10, 20, 30)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    assert len(Registry.load(path)) == 40


def _document(**overrides: Any) -> dict[str, Any]:
    entry = {
        "name": "alice",
        "public_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "preshared_key": None,
        "address_v4": "10.77.0.2",
        "address_v6": None,
        "enabled": True,
        "created": "2024-01-01T00:00:00Z",
    }
    entry.update(overrides)
    return {"version": 1, "peers": [entry]}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"name": "Bad Name"}, "peers[0].name"),
        ({"public_key": "short"}, "peers[0].public_key"),
        ({"public_key": 5}, "peers[0].public_key"),
        ({"preshared_key": "AAAA"}, "peers[0].preshared_key"),
        ({"address_v4": "fd00::1"}, "peers[0].address_v4"),
        ({"address_v6": "10.0.0.1"}, "peers[0].address_v6"),
        ({"address_v4": 167772161}, "peers[0].address_v4"),
        ({"enabled": "yes"}, "peers[0].enabled"),
        ({"colour": "red"}, "peers[0].colour"),
    ],
)
def test_damaged_entries_name_file_and_key(
    tmp_path: Path, overrides: dict[str, Any], key: str
) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(_document(**overrides)))
    with pytest.raises(ConfigError) as info:
        Registry.load(path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}: expected")


def test_duplicate_entries_in_the_file_are_reported(tmp_path: Path) -> None:
    doc = _document()
    doc["peers"].append(dict(doc["peers"][0]))
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="already exists"):
        Registry.load(path)




@settings(max_examples=150, deadline=None)
@given(json_values)
def test_garbage_documents_raise_only_config_error(doc: object) -> None:
    with contextlib.suppress(ConfigError):
        parse_peers(json.dumps(doc).encode(), "peers.json")


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["name", "public_key", "preshared_key", "address_v4", "address_v6",
                     "enabled", "created"]),
    json_values,
))  # fmt: skip
def test_garbage_peer_fields_raise_only_config_error(fields: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_peers(json.dumps(_document(**fields)).encode(), "peers.json")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_bytes_raise_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_peers(data, "peers.json")
