"""The cluster bundle: what makes a new member answer as the same logical server.

`aura cluster export` writes it on a member (0600, never through a symlink); `aura server init
--join` reads it on the next. It carries the server's WireGuard key, the CA and the TLS
identity clients pin, the cluster key that opens the preshared keys in the database, the
address pool every member must share, and where the database is. No password: each member
gets that from its own file or credential. The database never sees any of these keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from aura_common.config import ServerConfig
from aura_common.errors import ConfigError
from aura_common.state.atomic import read_bounded

BUNDLE_VERSION = 1
SIZE_LIMIT = 1 << 20
PRIVATE = ("server.key", "ca.key", "tls.key", "cluster.key")
PUBLIC = ("server.pub", "ca.pub", "ca.crt", "tls.crt")
REQUIRED = ("server.key", "server.pub", "ca.key", "ca.pub", "tls.crt", "tls.key", "cluster.key")
NETWORK_KEYS = ("ipv4", "ipv6", "strategy", "dns", "lease_idle_timeout")


def file_mode(name: str) -> int:
    return 0o600 if name in PRIVATE else 0o644


def build(config: ServerConfig) -> bytes:
    """The bundle of a member's identity (read from its key_dir) and the cluster's settings."""
    if config.registry is None:
        raise ConfigError(config.path, "registry", "a database (`aura server init --database` "
                          "first: a cluster shares its registry)")
    files = {}
    for name in (*PRIVATE, *PUBLIC):
        path = os.path.join(config.key_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if name in REQUIRED:
                raise ConfigError(path, "", "an existing file (`aura server init` creates it)"
                                  ) from None
            continue
        except OSError as error:
            raise ConfigError(path, "", f"a readable file ({error.strerror})") from None
        with os.fdopen(fd, "rb") as file:
            files[name] = base64.b64encode(file.read(SIZE_LIMIT)).decode()
    n = config.network
    document = {
        "version": BUNDLE_VERSION,
        "files": files,
        "network": {"ipv4": str(n.ipv4), "ipv6": None if n.ipv6 is None else str(n.ipv6),
                    "strategy": n.strategy, "dns": list(n.dns),
                    "lease_idle_timeout": n.lease_idle_timeout},
        "registry": {"database": config.registry.database},
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def read(path: str) -> tuple[dict[str, bytes], dict[str, Any], str]:
    """(files by name, the `network` section, the database connection string) of a bundle."""
    data = read_bounded(path, SIZE_LIMIT, "a readable cluster bundle")
    if len(data) > SIZE_LIMIT:
        raise ConfigError(path, "", f"a cluster bundle of at most {SIZE_LIMIT} bytes")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(path, "", "a cluster bundle (JSON) from `aura cluster export`") from None
    if not isinstance(document, dict) or document.get("version") != BUNDLE_VERSION:
        raise ConfigError(path, "version", str(BUNDLE_VERSION),
                          document.get("version") if isinstance(document, dict) else None)
    raw_files = document.get("files")
    if not isinstance(raw_files, dict):
        raise ConfigError(path, "files", "an object of file name to base64 content")
    files = {}
    for name, text in raw_files.items():
        if name not in (*PRIVATE, *PUBLIC):
            raise ConfigError(path, f"files.{name}", f"one of {', '.join((*PRIVATE, *PUBLIC))}")
        try:
            files[name] = base64.b64decode(str(text).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ConfigError(path, f"files.{name}", "base64 content") from None
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise ConfigError(path, f"files.{missing[0]}", "present (the bundle is incomplete)")
    network = document.get("network")
    if not isinstance(network, dict) or set(network) - set(NETWORK_KEYS):
        raise ConfigError(path, "network", f"an object with {', '.join(NETWORK_KEYS)}")
    registry = document.get("registry")
    database = registry.get("database") if isinstance(registry, dict) else None
    if not isinstance(database, str):
        raise ConfigError(path, "registry.database", "a connection string")
    return files, network, database
