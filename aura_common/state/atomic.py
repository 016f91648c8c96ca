"""The state files several processes share: atomic writes, lock files, versioned JSON.

Root writes into directories a service account owns (the registry for the router, a client's
state beside a config its user owns). Whoever owns such a directory may plant a symlink, a
FIFO or a hard link under any name in it, so every file here is opened relative to a
descriptor of its directory with O_NOFOLLOW, a new file is created with O_EXCL, and only a
file this process has just created is ever handed to another owner (by descriptor). The
directory itself is reached one component at a time (`open_directory`): a symlink on the way
is followed only where no other account could have put it, so an account that owns a folder
higher up cannot swap a folder below it for a link to /etc.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from typing import Any

from aura_common.errors import AuraError, ConfigError

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The folders on the way: O_PATH, so a folder we may search but not list is passed too.
_STEP_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted under the lock's name must not hang us.
_LOCK_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
LOCK_MODE = 0o640


class LockBusy(AuraError):
    """Another process holds the lock and the caller asked not to wait."""


# Symlinks followed on the way to one directory, as the kernel's own bound (ELOOP).
_MAX_LINKS = 40


def open_directory(directory: str | os.PathLike[str], create: int | None = None) -> int:
    """A descriptor of `directory`, reached as `walk_to` does (AuraError if refused)."""
    try:
        return walk_to(directory, create)
    except OSError as error:
        why = "a symlink is refused" if error.errno == errno.ELOOP else error.strerror
        raise AuraError(f"{os.fspath(directory)}: cannot open the directory ({why})") from None


def walk_to(directory: str | os.PathLike[str], create: int | None = None) -> int:
    """A descriptor of `directory`, reached one component at a time (OSError if refused;
    ELOOP for a symlink that may not be followed). With `create`, missing folders are made
    on the way with that mode (before the umask), as `os.makedirs` would, but through no link.

    The last component is never followed if it is a symlink. An earlier one is followed
    only when the folder holding it is one that no other account can change (`_sealed`):
    `/var/run` -> `/run` is root's, but a link that the owner of `/home/alice` put at
    `/home/alice/vpn` pointing to `/etc` is refused.
    """
    fd = _walk(directory, create)
    try:
        return os.open(".", _DIRECTORY_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _walk(directory: str | os.PathLike[str], create: int | None = None) -> int:
    """`walk_to`'s O_PATH descriptor of `directory`: enough to open a file in it, and
    needing only search permission, as a plain open() of a path would."""
    pending = os.path.abspath(os.fspath(directory)).split("/")[1:]
    pending.reverse()  # a stack: the next component last
    fd = os.open("/", _STEP_FLAGS)
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            try:
                child = os.open(part, _STEP_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                with contextlib.suppress(FileExistsError):  # made by another meanwhile
                    os.mkdir(part, create, dir_fd=fd)
                pending.append(part)
                continue
            except OSError as error:
                if error.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target = _link_target(fd, part)
                if target is None:
                    raise
                links += 1
                if not pending or links > _MAX_LINKS or not _may_follow(fd, part):
                    raise OSError(errno.ELOOP, "a symlink is refused") from None
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _STEP_FLAGS)
                pending.extend(reversed(target.split("/")))
                continue
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _link_target(dir_fd: int, name: str) -> str | None:
    """The target of `name` in the folder if it is a symlink, else None."""
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _may_follow(dir_fd: int, name: str) -> bool:
    """Whether no other account can have put the symlink `name` where it is: its folder is
    sealed, or sticky (/tmp) with the link root's or ours (only a link's owner replaces it)."""
    folder = os.fstat(dir_fd)
    if _sealed(folder):
        return True
    owner = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid
    return bool(folder.st_mode & stat.S_ISVTX) and owner in (0, os.geteuid())


def _sealed(status: os.stat_result) -> bool:
    """Whether only root (or this process's own account) can change the folder's entries."""
    return status.st_uid in (0, os.geteuid()) and not status.st_mode & 0o022


def open_beneath(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """`os.open` of `path` with O_NOFOLLOW, its folder reached as `walk_to` does.

    The one way root opens a file in a folder another account may own; OSError as os.open.
    """
    path = os.fspath(path)
    dir_fd = _walk(os.path.dirname(os.path.abspath(path)))
    try:
        return os.open(os.path.basename(path), flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                       dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


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
    read the registry. A symlink at `path` is replaced, never followed.
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    dir_fd = open_directory(os.path.dirname(os.path.abspath(path)))
    try:
        if owner is None:
            owner = _directory_owner(dir_fd)
        temp = f".{name}.{secrets.token_hex(6)}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                # Only when it changes something: a sandboxed client may not call chown at
                # all (aura-client@.service: SystemCallFilter=~@privileged).
                created = os.fstat(f.fileno())
                if owner is not None and (created.st_uid, created.st_gid) != owner:
                    os.fchown(f.fileno(), owner[0], owner[1])
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _directory_owner(dir_fd: int) -> tuple[int, int] | None:
    """(uid, gid) of the directory when root writes into a directory another account owns."""
    if os.geteuid() != 0:
        return None
    status = os.fstat(dir_fd)
    return None if status.st_uid == 0 else (status.st_uid, status.st_gid)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on `path + ".lock"` for a read-modify-write of `path`.

    A separate lock file is used because `write_atomic` replaces the data file's inode, which
    would silently drop a lock held on the old one. The directory is created if missing.
    With `wait=False` a lock held elsewhere raises LockBusy at once instead of blocking (the
    router's event loop must never wait on a lock another account can hold).
    """
    lock_path = os.fspath(path) + ".lock"
    dir_fd = open_directory(os.path.dirname(os.path.abspath(lock_path)), create=0o750)
    try:
        fd = _open_lock_file(dir_fd, os.path.basename(lock_path), lock_path)
    finally:
        os.close(dir_fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"{lock_path} is held by another process") from None
        yield
    finally:
        os.close(fd)


def _open_lock_file(dir_fd: int, name: str, shown: str) -> int:
    """Open the lock file, creating it (and only then giving it to the directory's owner)."""
    while True:
        try:
            fd = os.open(name, _LOCK_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            try:
                fd = os.open(name, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, LOCK_MODE,
                             dir_fd=dir_fd)
            except FileExistsError:
                continue  # created by someone else in between: open theirs
            # Not narrowed by the umask: the other accounts sharing the folder lock it too.
            os.fchmod(fd, LOCK_MODE)
            owner = _directory_owner(dir_fd)
            if owner is not None:
                os.fchown(fd, *owner)
            return fd
        except OSError as error:
            why = "a symlink is refused" if error.errno == errno.ELOOP else error.strerror
            raise AuraError(f"{shown}: cannot open the lock file ({why})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise AuraError(f"{shown}: not a regular file; remove it")
        return fd


def read_bounded(path: str, limit: int, expected: str) -> bytes:
    """At most `limit` + 1 bytes of the file at `path` (more than `limit` says it is too
    large), never through a symlink and never waiting on a FIFO; a file that cannot be read is
    a ConfigError naming it and `expected`."""
    try:
        fd = open_beneath(path, _READ_FLAGS)
        with os.fdopen(fd, "rb") as file:
            return file.read(limit + 1)
    except OSError as error:
        raise ConfigError(path, "", f"{expected} ({error.strerror})") from None


# State files are read whole: the registry of a large server is a few MiB (about 300 bytes
# a peer); anything larger is not ours, and must not cost its reader (root, for the CLI) more.
STATE_FILE_LIMIT = 64 << 20
# O_NONBLOCK: opening a FIFO planted under the file's name must not hang its reader.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def read_state_file(path: str, limit: int = STATE_FILE_LIMIT) -> bytes | None:
    """The bytes of a state file; None when it does not exist yet. Errors name the file.

    Several state files live in a directory a service account owns, and root reads them (the
    CLI): a symlink in the file's place is refused, not followed; so is anything but a
    regular file, and a file over `limit` bytes.
    """
    try:
        fd = open_beneath(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "a symlink is refused" if exc.errno == errno.ELOOP else exc.strerror
        raise ConfigError(path, "", f"a readable file ({why})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(path, "", "a regular file")
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise ConfigError(path, "", f"a readable file ({exc.strerror})") from None
    if len(data) > limit:
        raise ConfigError(path, "", f"a file of at most {limit} bytes")
    return data


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
