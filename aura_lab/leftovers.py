"""What a test run leaves behind when it is killed, and a later run's reclaiming of it.

A run that ends cleans up itself; a run killed with SIGKILL (a CI job stopped by hand) cannot,
and its PostgreSQL clusters (`pg.py`) and booted containers (`tests/system/container.py`)
keep running. Each such folder therefore names its owner in a marker file: the pid of the
process that made it and that process's start time (a pid alone may be reused). A later run
reclaims a folder only when that process is provably gone; a folder without a marker (one
being made right now, or made before markers existed) is never touched.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

OWNER = ".aura-owner"


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped, after a moment for a kill to land."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


def identity(pid: int) -> str | None:
    """`pid` and its start time (clock ticks after boot), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return f"{pid} {fields[19]}"  # field 22 of proc(5): starttime


def mark(folder: Path, name: str = OWNER, pid: int | None = None) -> None:
    """Record `pid` (default: this process) as the owner of `folder`."""
    found = identity(os.getpid() if pid is None else pid)
    assert found is not None, "marking a folder for a process that is gone"
    (folder / name).write_text(found + "\n")


def gone(folder: Path, name: str = OWNER) -> bool:
    """Whether the process the marker `name` in `folder` names has ended; False without one."""
    try:
        recorded = (folder / name).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return False
    pid = recorded.split()[0]
    return not pid.isdigit() or identity(int(pid)) != recorded


def abandoned(parent: Path, prefix: str) -> Iterator[Path]:
    """The folders `parent/prefix*` whose owner has provably ended."""
    with suppress(FileNotFoundError):
        for folder in sorted(parent.glob(f"{prefix}*")):
            if folder.is_dir() and not folder.is_symlink() and gone(folder):
                yield folder


def kill_if_alive(folder: Path, name: str, *, group: bool = False) -> None:
    """SIGKILL the process the marker `name` in `folder` names (with `group`, its process
    group: one started as its own session), if that very process still runs."""
    with suppress(FileNotFoundError):
        recorded = (folder / name).read_text().strip()
        pid = int(recorded.split()[0])
        if identity(pid) == recorded:
            with suppress(ProcessLookupError):
                (os.killpg if group else os.kill)(pid, signal.SIGKILL)
