"""Tunnel addresses: the pool of the server's networks, and persisted dynamic leases.

The server holds the first host address of each network. A peer's IPv6 address has the same
host index as its IPv4 one (10.77.0.7 <-> fd77:7777::7), so one number identifies a peer's
pair of addresses.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import LockBusy, locked, parse_versioned_json, write_atomic
from aura_common.state.timestamps import now_text

log = logging.getLogger(__name__)

Addresses = tuple[str, str | None]
LEASES_VERSION = 1


class AddressPool:
    def __init__(self, ipv4: IPv4Network, ipv6: IPv6Network | None = None) -> None:
        self.ipv4, self.ipv6 = ipv4, ipv6

    @property
    def server_v4(self) -> IPv4Address:
        return self.ipv4.network_address + 1

    @property
    def server_v6(self) -> IPv6Address | None:
        return None if self.ipv6 is None else self.ipv6.network_address + 1

    @property
    def capacity(self) -> int:
        """Addresses left for peers: all but network, server and broadcast."""
        return self.ipv4.num_addresses - 3

    def _pair(self, index: int) -> Addresses:
        v4 = str(self.ipv4.network_address + index)
        v6 = None if self.ipv6 is None else str(self.ipv6.network_address + index)
        return v4, v6

    def _index(self, ip: IPv4Address | IPv6Address) -> int | None:
        network = self.ipv4 if ip.version == 4 else self.ipv6
        if network is None or ip not in network:
            return None
        return int(ip) - int(network.network_address)

    def next_free(self, taken: Iterable[object], within: Iterable[int] | None = None) -> Addresses:
        """The lowest free (v4, v6) pair; `taken` holds addresses (str or ipaddress) in use.

        `within`: only these host indices (a cluster member's blocks of the pool).
        """
        used = {self._index(ipaddress.ip_address(str(a))) for a in taken}
        last = self.ipv4.num_addresses - 1
        candidates = range(2, last) if within is None else sorted(
            i for i in within if 2 <= i < last)
        for index in candidates:
            if index not in used:
                return self._pair(index)
        if within is not None:
            raise AuraError(
                f"no free address in the {len(candidates)} of the pool {self.ipv4} this member "
                "holds; it claims another block from the registry database when it can"
            )
        raise AuraError(
            f"the address pool {self.ipv4} is exhausted ({self.capacity} peer addresses in use); "
            "revoke peers or configure a larger network.ipv4"
        )

    def validate_static(self, address: str) -> Addresses:
        """Check an operator-chosen address and return the peer's (v4, v6) pair.

        Either family may be given; the other is derived from the same host index.
        """
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise AuraError(f"{address!r} is not an IP address") from None
        network = self.ipv4 if ip.version == 4 else self.ipv6
        if network is None:
            raise AuraError(f"{address} is IPv6 but the server has no IPv6 network")
        if ip not in network:
            raise AuraError(f"{address} is outside the address pool {network}")
        index = int(ip) - int(network.network_address)
        if index == 0:
            raise AuraError(f"{address} is the network address of {network}")
        if index == 1:
            raise AuraError(f"{address} is the server's own address")
        if index >= self.ipv4.num_addresses - 1:
            if ip.version == 4:
                raise AuraError(f"{address} is the broadcast address of {network}")
            raise AuraError(f"{address} has no IPv4 counterpart in {self.ipv4}")
        return self._pair(index)


class Leases:
    """Addresses assigned on connect (strategy `dynamic`), kept in a file across restarts.

    A lease is sticky: the same name gets the same addresses until it is released.
    The router holds them in memory and never waits for the file's lock (anyone who may read
    the state directory can hold it): while the lock is busy the file stays behind (`unsaved`)
    and `flush` or the next change writes it.
    """

    def __init__(self, path: str | os.PathLike[str], pool: AddressPool) -> None:
        self.path = os.fspath(path)
        self.pool = pool
        self._leases: dict[str, dict[str, Any]] = self._read()
        self.unsaved = False

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        try:
            return parse_leases(data, self.path, self.pool)
        except ConfigError as error:
            # Only the router writes this file; a damaged one (or one from another pool)
            # must not keep it from starting. Connected peers lease again; the next write
            # replaces the file.
            log.warning("ignoring a damaged leases file (it is rewritten next): %s", error)
            return {}

    def _save(self) -> None:
        doc = {"version": LEASES_VERSION, "leases": self._leases}
        write_atomic(self.path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())

    def lease(self, peer_name: str, reserved: Iterable[object] = (),
              within: Iterable[int] | None = None) -> Addresses:
        """The peer's addresses, assigning free ones (not leased, not `reserved`, and among the
        host indices `within` when given) if needed."""
        current = self._leases.get(peer_name)
        if current is not None:
            return current["v4"], current["v6"]
        v4, v6 = self.pool.next_free([*self.taken(), *reserved], within)
        self._leases[peer_name] = {"v4": v4, "v6": v6, "since": now_text()}
        self._persist()
        return v4, v6

    def taken(self) -> list[str]:
        return [a for lease in self._leases.values() for a in (lease["v4"], lease["v6"]) if a]

    def release(self, peer_name: str) -> None:
        if self._leases.pop(peer_name, None) is not None:
            self._persist()

    def flush(self) -> None:
        """Write leases a busy lock kept in memory only."""
        if self.unsaved:
            self._persist()

    def _persist(self) -> None:
        try:
            with locked(self.path, wait=False):
                self._save()
        except LockBusy as busy:
            if not self.unsaved:
                log.warning("%s; keeping leases in memory until it is free", busy)
            self.unsaved = True
            return
        except OSError as error:
            # A full or read-only state directory: the lease holds in memory (the file keeps
            # its last content) and `flush` writes it once the disk takes it.
            if not self.unsaved:
                log.error("cannot write %s: %s; keeping leases in memory until it can be",
                          self.path, error.strerror)
            self.unsaved = True
            return
        self.unsaved = False

    def active(self) -> dict[str, Addresses]:
        return {name: (lease["v4"], lease["v6"]) for name, lease in self._leases.items()}


def parse_leases(data: bytes, path: str, pool: AddressPool) -> dict[str, dict[str, Any]]:
    """Validate a leases file; leases outside the (possibly changed) pool are an error."""
    doc = parse_versioned_json(data, path, LEASES_VERSION)
    leases = doc.get("leases")
    if not isinstance(leases, dict):
        raise ConfigError(path, "leases", "an object", leases)
    seen: set[str] = set()
    result = {}
    for name, lease in leases.items():
        key = f"leases.{name}"
        if not isinstance(lease, dict) or not isinstance(lease.get("v4"), str):
            raise ConfigError(path, key, "an object with v4, v6 and since", lease)
        try:
            v4, v6 = pool.validate_static(lease["v4"])
        except AuraError as exc:
            raise ConfigError(path, f"{key}.v4", "an address inside the pool", str(exc)) from None
        if lease.get("v6") != v6:
            raise ConfigError(path, f"{key}.v6", repr(v6), lease.get("v6"))
        if v4 in seen:
            raise ConfigError(path, f"{key}.v4", "an address leased only once", v4)
        seen.add(v4)
        since = lease.get("since")
        if not isinstance(since, str):
            since = now_text()
        result[name] = {"v4": v4, "v6": v6, "since": since}
    return result
