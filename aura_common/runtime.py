"""`runtime.json` in the state directory: the addresses each transport actually bound.

Written by the transports at start (after port scanning or socket activation), read by
`aura status` and `aura sign-bridges --from-runtime`:

    {"version": 1, "transports": {"udp": {"bound": ["[::]:8443"], "bound_at": "...Z",
                                          "pid": 1234, "activated": false}}}
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aura_common.atomic import locked, parse_versioned_json, read_state_file, write_atomic
from aura_common.config import parse_host_port
from aura_common.errors import ConfigError
from aura_common.limits import now_text
from aura_common.roles import Transport, is_transport

log = logging.getLogger(__name__)

RUNTIME_VERSION = 1


def _empty() -> dict[str, Any]:
    return {"version": RUNTIME_VERSION, "transports": {}}


def parse_runtime(data: bytes, path: str) -> dict[str, Any]:
    """Validate the file's content; every problem names the file and the key."""
    doc = parse_versioned_json(data, path, RUNTIME_VERSION)
    transports = doc.get("transports")
    if not isinstance(transports, dict):
        raise ConfigError(path, "transports", "an object", transports)
    for name, entry in transports.items():
        key = f"transports.{name}"
        if not is_transport(name):
            raise ConfigError(path, key, f"one of {', '.join(Transport)}")
        if not isinstance(entry, dict):
            raise ConfigError(path, key, "an object", entry)
        bound = entry.get("bound")
        if not isinstance(bound, list) or not all(isinstance(b, str) for b in bound):
            raise ConfigError(path, f"{key}.bound", "a list of HOST:PORT strings", bound)
        for address in bound:
            try:
                parse_host_port(address)
            except ValueError:
                raise ConfigError(path, f"{key}.bound", "HOST:PORT addresses", address) from None
        bound_at = entry.get("bound_at")
        try:
            if not isinstance(bound_at, str):
                raise ValueError
            datetime.datetime.fromisoformat(bound_at)
        except ValueError:
            raise ConfigError(path, f"{key}.bound_at", "an ISO-8601 time", bound_at) from None
        pid = entry.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ConfigError(path, f"{key}.pid", "a process id", pid)
        if not isinstance(entry.get("activated"), bool):
            raise ConfigError(path, f"{key}.activated", "true or false", entry.get("activated"))
    return doc


def read_runtime(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The runtime file's content; a missing file means no transport has bound yet."""
    path = os.fspath(path)
    data = read_state_file(path)
    return _empty() if data is None else parse_runtime(data, path)


def read_runtime_for_service(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The runtime file as a service sees it: a damaged one reads as empty, with a warning.

    Only the transports write this file and each rewrites its own entry at start, so damage
    (a crash mid-edit by hand, a full disk in an old version) must not stop a service: the
    next `record_bound` replaces the file.
    """
    try:
        return read_runtime(path)
    except ConfigError as exc:
        log.warning("ignoring a damaged runtime file (it is rewritten next): %s", exc)
        return _empty()


def ports_of(addresses: Iterable[str]) -> set[int]:
    """The ports of HOST:PORT addresses, as a transport's `bound` lists them."""
    return {parse_host_port(address)[1] for address in addresses}


def listening_ports(bound: Mapping[str, Iterable[str]]) -> dict[str, int]:
    """The port of each transport from its bound addresses, where they agree on one."""
    ports = {}
    for name, addresses in bound.items():
        found = ports_of(addresses)
        if is_transport(name) and len(found) == 1:
            ports[name] = found.pop()
    return ports


def _update(path: str, change: str, transport: str, entry: dict[str, Any] | None) -> None:
    try:
        with locked(path):
            doc = read_runtime_for_service(path)
            if entry is None:
                if doc["transports"].pop(transport, None) is None:
                    return
            else:
                doc["transports"][transport] = entry
            data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
            write_atomic(path, data, 0o644)
    except OSError as exc:
        # A full or read-only state directory: the service keeps serving; only `aura status`
        # and `sign-bridges --from-runtime` see the old addresses until a write succeeds.
        log.error("cannot write %s while %s: %s; it keeps its previous content",
                  path, change, exc.strerror)


def record_bound(
    path: str | os.PathLike[str], transport: str, addresses: Sequence[str], activated: bool
) -> None:
    """Record that `transport` (this process) listens on `addresses` (HOST:PORT strings)."""
    if not is_transport(transport):
        raise ValueError(f"unknown transport {transport!r}")
    entry = {
        "bound": list(addresses),
        "bound_at": now_text(),
        "pid": os.getpid(),
        "activated": activated,
    }
    _update(os.fspath(path), f"recording {transport}", transport, entry)


def forget(path: str | os.PathLike[str], transport: str) -> None:
    """Remove `transport`'s entry (it stopped listening)."""
    _update(os.fspath(path), f"forgetting {transport}", transport, None)
