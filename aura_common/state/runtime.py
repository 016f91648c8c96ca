"""What each transport actually bound: `transports/<name>/runtime.json` in the state directory.

Written by each transport at start (after port scanning or socket activation), read by
`aura status`, `aura sign-bridges --from-runtime`, the router and aura-quic:

    {"version": 2, "transport": "udp", "bound": ["[::]:8443"], "bound_at": "...Z",
     "pid": 1234, "activated": false}

Each transport writes only its own file, in a folder only its account may write (the folder
above is root's), so no transport can misstate another's ports or replace its file. Readers,
root among them, read each file bounded in size and without following a symlink
(`atomic.read_state_file`), and validate it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aura_common.config import parse_host_port
from aura_common.errors import ConfigError
from aura_common.roles import Transport, is_transport
from aura_common.state.atomic import parse_versioned_json, read_state_file, write_atomic
from aura_common.state.timestamps import now_text

log = logging.getLogger(__name__)

RUNTIME_VERSION = 2
# A transport lists a handful of addresses: a few hundred bytes.
RUNTIME_FILE_LIMIT = 64 << 10


def runtime_file(transports_dir: str | os.PathLike[str], transport: str) -> str:
    """The file `transport` records its addresses in (in its own folder)."""
    return os.path.join(transports_dir, transport, "runtime.json")


def parse_runtime(data: bytes, path: str, transport: str) -> dict[str, Any]:
    """Validate `transport`'s file; every problem names the file and the key."""
    entry = parse_versioned_json(data, path, RUNTIME_VERSION)
    if entry.get("transport") != transport:
        raise ConfigError(path, "transport", repr(transport), entry.get("transport"))
    bound = entry.get("bound")
    if not isinstance(bound, list) or not all(isinstance(b, str) for b in bound):
        raise ConfigError(path, "bound", "a list of HOST:PORT strings", bound)
    for address in bound:
        try:
            parse_host_port(address)
        except ValueError:
            raise ConfigError(path, "bound", "HOST:PORT addresses", address) from None
    bound_at = entry.get("bound_at")
    try:
        if not isinstance(bound_at, str):
            raise ValueError
        datetime.datetime.fromisoformat(bound_at)
    except ValueError:
        raise ConfigError(path, "bound_at", "an ISO-8601 time", bound_at) from None
    pid = entry.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ConfigError(path, "pid", "a process id", pid)
    if not isinstance(entry.get("activated"), bool):
        raise ConfigError(path, "activated", "true or false", entry.get("activated"))
    return entry


def read_entry(transports_dir: str | os.PathLike[str], transport: str) -> dict[str, Any] | None:
    """`transport`'s entry; None when it has not bound (no file)."""
    path = runtime_file(transports_dir, transport)
    data = read_state_file(path, RUNTIME_FILE_LIMIT)
    return None if data is None else parse_runtime(data, path, transport)


def read_runtime(transports_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The entry of every transport that has bound, by name. ConfigError for a damaged file."""
    entries = {}
    for transport in Transport:
        entry = read_entry(transports_dir, transport.value)
        if entry is not None:
            entries[transport.value] = entry
    return entries


def read_runtime_for_service(
    transports_dir: str | os.PathLike[str],
) -> dict[str, dict[str, Any]]:
    """As `read_runtime`, for a service: a damaged file counts as not bound, with a warning.

    Damage (a crash mid-edit by hand, a full disk in an old version) must not stop a
    service: the transport's next `record_bound` replaces its file.
    """
    entries = {}
    for transport in Transport:
        try:
            entry = read_entry(transports_dir, transport.value)
        except ConfigError as exc:
            log.warning("ignoring a damaged runtime file (it is rewritten next): %s", exc)
            continue
        if entry is not None:
            entries[transport.value] = entry
    return entries


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


def record_bound(
    transports_dir: str | os.PathLike[str], transport: str, addresses: Sequence[str],
    activated: bool,
) -> None:
    """Record that `transport` (this process) listens on `addresses` (HOST:PORT strings)."""
    if not is_transport(transport):
        raise ValueError(f"unknown transport {transport!r}")
    path = runtime_file(transports_dir, transport)
    entry = {
        "version": RUNTIME_VERSION,
        "transport": transport,
        "bound": list(addresses),
        "bound_at": now_text(),
        "pid": os.getpid(),
        "activated": activated,
    }
    try:
        # Made by `aura server init` and the package, owned by the transport's account; a
        # development run (everything as one user) makes it here.
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        write_atomic(path, (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode(), 0o644)
    except OSError as exc:
        # A full or read-only state directory: the service keeps serving; only `aura status`
        # and `sign-bridges --from-runtime` see the old addresses until a write succeeds.
        log.error("cannot write %s while recording %s: %s; it keeps its previous content",
                  path, transport, exc.strerror)


def forget(transports_dir: str | os.PathLike[str], transport: str) -> None:
    """Remove `transport`'s entry (it stopped listening)."""
    path = runtime_file(transports_dir, transport)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    except OSError as exc:
        log.error("cannot remove %s while forgetting %s: %s", path, transport, exc.strerror)
