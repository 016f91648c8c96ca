"""The newest initiation timestamp the router answered per peer, kept across its restarts.

WireGuard refuses an initiation whose timestamp is not newer than the last one it accepted
from that peer, but only as long as it remembers. Here the router hands the session keys to
the transport that carried the initiation, so a compromised transport that kept a peer's
initiation could replay it to a restarted router and get keys and a ticket for that peer.
The router saves what it answered (at most once a LIMITS_INTERVAL, and when it stops), and
restores it before the first handshake.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping

from aura_common.errors import ConfigError
from aura_common.state.atomic import parse_versioned_json, read_state_file, write_atomic

VERSION = 1
KEY_SIZE = 32
TIMESTAMP_SIZE = 12  # TAI64N


def load(path: str) -> dict[bytes, bytes]:
    """public key -> TAI64N timestamp; empty when the file does not exist yet."""
    data = read_state_file(path)
    return {} if data is None else parse(data, path)


def parse(data: bytes, path: str) -> dict[bytes, bytes]:
    """The file's timestamps; raises only ConfigError, naming `path`."""
    document = parse_versioned_json(data, path, VERSION)
    stamps = document.get("timestamps")
    if not isinstance(stamps, dict):
        raise ConfigError(path, "timestamps", "an object of public key: timestamp")
    timestamps = {}
    for key, value in stamps.items():
        try:
            public = base64.b64decode(key, validate=True)
            timestamp = bytes.fromhex(value) if isinstance(value, str) else b""
        except (binascii.Error, ValueError):
            raise ConfigError(path, "timestamps", "base64 keys and hex timestamps") from None
        if len(public) != KEY_SIZE or len(timestamp) != TIMESTAMP_SIZE:
            raise ConfigError(path, "timestamps", "32-byte keys and 12-byte timestamps")
        timestamps[public] = timestamp
    return timestamps


def save(path: str, timestamps: Mapping[bytes, bytes], registered: Iterable[bytes]) -> None:
    """Writes the timestamps of the peers still in the registry (others need none)."""
    kept = {base64.b64encode(public).decode(): timestamps[public].hex()
            for public in registered if public in timestamps}
    document = {"version": VERSION, "timestamps": kept}
    write_atomic(path, (json.dumps(document, indent=1) + "\n").encode(), mode=0o600)
