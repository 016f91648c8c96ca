"""The peer registry: who may connect, with which keys and addresses.

It lives in one of two places behind one interface (`RegistryStore`, from `open_store`): the
file `state_dir/router/peers.json` (one server, the default) or a cluster's PostgreSQL database
(`registry:` in server.yaml, `aura_common.cluster.store`). The CLI changes it with
`store.edit()` (load, change, save: under the file lock, or in one database transaction) and
then asks the router to reload; the router reads it with `store.load()` (a cluster member
also follows the database's notifications). Revoking a peer removes its entry, keys
included, so nothing secret about it stays behind.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from aura_common.config import ServerConfig, is_peer_name
from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import locked, parse_versioned_json, read_state_file, write_atomic
from aura_common.state.timestamps import now_text, parse_time

REGISTRY_VERSION = 1
KEY_SIZE = 32


@dataclass(frozen=True)
class RegisteredPeer:
    name: str
    public_key: bytes
    preshared_key: bytes | None = None
    address_v4: str | None = None
    address_v6: str | None = None
    enabled: bool = True
    created: str = field(default_factory=now_text)
    expires: str | None = None  # ISO 8601 UTC (limits.format_time); None: never
    quota_bytes: int | None = None  # rx + tx through the tunnel; None: unlimited

    @property
    def limited(self) -> bool:
        return self.expires is not None or self.quota_bytes is not None

    @property
    def addresses(self) -> list[str]:
        return [a for a in (self.address_v4, self.address_v6) if a is not None]


def _encode_key(key: bytes | None) -> str | None:
    return None if key is None else base64.b64encode(key).decode("ascii")


def _peer_to_json(peer: RegisteredPeer) -> dict[str, Any]:
    return {
        "name": peer.name,
        "public_key": _encode_key(peer.public_key),
        "preshared_key": _encode_key(peer.preshared_key),
        "address_v4": peer.address_v4,
        "address_v6": peer.address_v6,
        "enabled": peer.enabled,
        "created": peer.created,
        "expires": peer.expires,
        "quota_bytes": peer.quota_bytes,
    }


def registry_document(peers: Iterable[RegisteredPeer]) -> bytes:
    """The file's bytes for `peers` (also a cluster member's local copy)."""
    doc = {"version": REGISTRY_VERSION, "peers": [_peer_to_json(p) for p in peers]}
    return (json.dumps(doc, indent=2) + "\n").encode()


class Registry:
    def __init__(self, path: str | os.PathLike[str],
                 peers: list[RegisteredPeer] | None = None) -> None:
        self.path = os.fspath(path)
        self._by_name: dict[str, RegisteredPeer] = {}
        self._by_key: dict[bytes, RegisteredPeer] = {}
        self._by_address: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, RegisteredPeer] = {}
        for peer in peers or []:
            self.add(peer)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Registry:
        """The registry in `path`; a missing file is an empty registry."""
        path = os.fspath(path)
        data = read_state_file(path)
        return cls(path) if data is None else cls(path, parse_peers(data, path))

    @classmethod
    @contextlib.contextmanager
    def edit(cls, path: str | os.PathLike[str]) -> Iterator[Registry]:
        """Load, let the caller change, and save, holding the file lock throughout.

        Nothing is saved if the block raises.
        """
        with locked(path):
            registry = cls.load(path)
            yield registry
            registry.save()

    def save(self) -> None:
        """Write the file atomically (mode 0600: it holds preshared keys).

        Call it inside `edit` (or hold `atomic.locked(path)`) when other processes may write.
        """
        write_atomic(self.path, registry_document(self), mode=0o600)

    def add(self, peer: RegisteredPeer) -> None:
        if not is_peer_name(peer.name):
            raise AuraError(
                f"invalid peer name {peer.name!r}: use 1-32 of a-z 0-9 _ . - "
                "starting with a letter or digit"
            )
        if len(peer.public_key) != KEY_SIZE:
            raise AuraError(f"peer {peer.name}: public key must be {KEY_SIZE} bytes")
        if peer.preshared_key is not None and len(peer.preshared_key) != KEY_SIZE:
            raise AuraError(f"peer {peer.name}: preshared key must be {KEY_SIZE} bytes")
        if peer.name in self._by_name:
            raise AuraError(f"a peer named {peer.name!r} already exists")
        other = self._by_key.get(peer.public_key)
        if other is not None:
            raise AuraError(f"peer {other.name!r} already uses this public key")
        ips = [ipaddress.ip_address(a) for a in peer.addresses]  # ValueError: a caller bug
        for ip in ips:
            holder = self._by_address.get(ip)
            if holder is not None:
                raise AuraError(f"address {ip} already belongs to peer {holder.name!r}")
        self._by_name[peer.name] = peer
        self._by_key[peer.public_key] = peer
        for ip in ips:
            self._by_address[ip] = peer

    def revoke(self, name: str) -> RegisteredPeer:
        """Remove the peer; it can no longer connect once the router reloads."""
        peer = self._by_name.pop(name, None)
        if peer is None:
            raise AuraError(f"no peer named {name!r} (see `aura list-clients`)")
        del self._by_key[peer.public_key]
        for address in peer.addresses:
            del self._by_address[ipaddress.ip_address(address)]
        return peer

    def replace(self, name: str, **changes: Any) -> RegisteredPeer:
        """Change fields of a peer other than its name, keys and addresses (limits, enabled)."""
        current = self._by_name.get(name)
        if current is None:
            raise AuraError(f"no peer named {name!r} (see `aura list-clients`)")
        peer = dataclasses.replace(current, **changes)
        self._by_name[name] = self._by_key[peer.public_key] = peer
        for address in peer.addresses:
            self._by_address[ipaddress.ip_address(address)] = peer
        return peer

    def get(self, name: str) -> RegisteredPeer | None:
        return self._by_name.get(name)

    def by_key(self, public_key: bytes) -> RegisteredPeer | None:
        return self._by_key.get(public_key)

    def by_address(self, address: str) -> RegisteredPeer | None:
        return self._by_address.get(ipaddress.ip_address(address))

    def taken_addresses(self) -> set[str]:
        return {a for peer in self for a in peer.addresses}

    def __iter__(self) -> Iterator[RegisteredPeer]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


class RegistryStore(Protocol):
    """Where the registry lives: the file (one server) or the cluster's database."""

    def load(self) -> Registry: ...

    def edit(self) -> contextlib.AbstractContextManager[Registry]:
        """Load, let the caller change, and save atomically; nothing is saved if it raises."""
        ...


class FileStore:
    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> Registry:
        return Registry.load(self.path)

    def edit(self) -> contextlib.AbstractContextManager[Registry]:
        return Registry.edit(self.path)


def open_store(config: ServerConfig) -> RegistryStore:
    if config.registry is None:
        return FileStore(config.peers_file)
    from aura_common.cluster.store import DatabaseStore  # psycopg only for clusters

    return DatabaseStore(config)


def parse_peers(data: bytes, path: str) -> list[RegisteredPeer]:
    """Validate a registry file; every problem names the file and `peers[i].key`."""
    doc = parse_versioned_json(data, path, REGISTRY_VERSION)
    items = doc.get("peers")
    if not isinstance(items, list):
        raise ConfigError(path, "peers", "a list", items)
    peers = []
    for index, item in enumerate(items):
        key = f"peers[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(path, key, "an object", item)
        peers.append(parse_peer(item, path, key))
    # Uniqueness is checked by Registry.add; report it against the file too.
    try:
        Registry(path, peers)
    except AuraError as exc:
        raise ConfigError(path, "peers", "unique names, keys and addresses", str(exc)) from None
    return peers


def parse_peer(item: dict[str, Any], path: str, key: str) -> RegisteredPeer:
    """One peer as the file spells it (keys in base64); errors name `path` and `key`."""
    known = ("name", "public_key", "preshared_key", "address_v4", "address_v6", "enabled",
             "created", "expires", "quota_bytes")  # fmt: skip
    unknown = sorted(str(k) for k in item if k not in known)
    if unknown:
        raise ConfigError(path, f"{key}.{unknown[0]}", f"one of the known keys: {', '.join(known)}")
    name = item.get("name")
    if not isinstance(name, str) or not is_peer_name(name):
        raise ConfigError(path, f"{key}.name", "a name matching [a-z0-9][a-z0-9_.-]{0,31}", name)

    def key_field(field_name: str, optional: bool) -> bytes | None:
        value = item.get(field_name)
        if value is None and optional:
            return None
        raw = b""
        if isinstance(value, str):
            with contextlib.suppress(binascii.Error, UnicodeEncodeError):
                raw = base64.b64decode(value.encode("ascii"), validate=True)
        if len(raw) != KEY_SIZE:
            raise ConfigError(path, f"{key}.{field_name}", "a base64 key of 32 bytes", value)
        return raw

    def address_field(field_name: str, version: int) -> str | None:
        value = item.get(field_name)
        if value is None:
            return None
        try:
            ip = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            ip = None
        if ip is None or ip.version != version:
            raise ConfigError(
                path, f"{key}.{field_name}", f"an IPv{version} address or null", value
            )
        return str(ip)

    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(path, f"{key}.enabled", "true or false", enabled)
    created = item.get("created", "")
    if not isinstance(created, str) or len(created) > 64:
        raise ConfigError(path, f"{key}.created", "an ISO-8601 time string", created)
    expires = item.get("expires")
    if expires is not None:
        try:
            parse_time(expires if isinstance(expires, str) else "")
        except ValueError:
            raise ConfigError(
                path, f"{key}.expires", "an ISO-8601 time with offset, or null", expires
            ) from None
    quota = item.get("quota_bytes")
    if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool) or quota < 1):
        raise ConfigError(path, f"{key}.quota_bytes", "a byte count (integer >= 1), or null", quota)
    public_key = key_field("public_key", optional=False)
    assert public_key is not None
    return RegisteredPeer(
        name=name,
        public_key=public_key,
        preshared_key=key_field("preshared_key", optional=True),
        address_v4=address_field("address_v4", 4),
        address_v6=address_field("address_v6", 6),
        enabled=enabled,
        created=created,
        expires=expires,
        quota_bytes=quota,
    )
