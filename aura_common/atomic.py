"""The state files several processes share: atomic writes, lock files, versioned JSON."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from aura_common.errors import ConfigError


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    owner: tuple[int, int] | None = None,
) -> None:
    """Replace `path` with `data` so readers see either the old or the new file, never a mix.

    The temporary file lives in the same directory (a rename across file systems is not
    atomic); both the file and the directory are fsynced so the new content survives a crash.
    Without an explicit `owner`, root writing into a service account's directory leaves the
    file to that account, so `aura provision-client` run as root keeps the router able to
    read the registry.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if owner is None:
        owner = directory_owner(directory)
    fd, temp_path = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), owner[0], owner[1])
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def directory_owner(directory: str) -> tuple[int, int] | None:
    """(uid, gid) of `directory` when root writes into a directory another account owns."""
    if os.geteuid() != 0:
        return None
    status = os.stat(directory)
    return None if status.st_uid == 0 else (status.st_uid, status.st_gid)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on `path + ".lock"` for a read-modify-write of `path`.

    A separate lock file is used because `write_atomic` replaces the data file's inode, which
    would silently drop a lock held on the old one. The directory is created if missing.
    """
    lock_path = os.fspath(path) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), mode=0o750, exist_ok=True)
    # flock needs only a readable fd, so a lock file another user created still works for
    # anyone who may read it; the state directory's own mode keeps strangers out.
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    owner = directory_owner(os.path.dirname(os.path.abspath(lock_path)))
    if owner is not None:
        os.fchown(fd, *owner)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def parse_versioned_json(data: bytes, path: str, version: int) -> dict[str, Any]:
    """The JSON object of a state file whose `version` must be `version`; errors name the file."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(path, "", "a JSON document") from None
    if not isinstance(document, dict):
        raise ConfigError(path, "", "a JSON object", type(document).__name__)
    found = document.get("version")
    if found != version or isinstance(found, bool):
        raise ConfigError(path, "version", str(version), found)
    return document
