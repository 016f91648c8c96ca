"""A full or read-only state directory: the router's state writes log one line and go on.

The writes fail for real: a read-only directory (chmod, as an unprivileged child cannot
write) would need another user, so the failure is injected at `write_atomic`, the one place
every state file is written through, with the errno a full (ENOSPC) or read-only (EROFS)
file system gives.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from pathlib import Path

import pytest

from aura_common.state import client_limits, pool

ERRNOS = [errno.ENOSPC, errno.EROFS]


def refuse_writes(monkeypatch: pytest.MonkeyPatch, module: object, errno_: int) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(module, "write_atomic", refuse)


@pytest.mark.parametrize("errno_", ERRNOS)
def test_leases_stay_in_memory_and_are_written_once_the_disk_takes_them(
    tmp_path: Path, errno_: int, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "leases.json"
    addresses = pool.AddressPool(ipaddress.IPv4Network("10.77.0.0/24"))
    leases = pool.Leases(path, addresses)
    first = leases.lease("alice")
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        refuse_writes(patch, pool, errno_)
        with caplog.at_level(logging.WARNING, logger="aura_common.state.pool"):
            second = leases.lease("bob")  # no exception: the router keeps serving
            leases.lease("carol")
        assert second != first and leases.unsaved
        assert path.read_bytes() == before  # what was written is not lost
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1  # one line per failing streak, not one per write
    assert errors[0].levelno == logging.ERROR
    assert str(path) in errors[0].getMessage() and os.strerror(errno_) in errors[0].getMessage()
    leases.flush()  # the disk has room again
    assert not leases.unsaved
    assert set(pool.Leases(path, addresses).active()) == {"alice", "bob", "carol"}


@pytest.mark.parametrize("errno_", ERRNOS)
def test_usage_is_kept_and_saved_later_when_the_disk_refuses(
    tmp_path: Path, errno_: int, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "usage.json"
    usage = client_limits.Usage(path)
    usage.add("alice", 1000)
    usage.save(0.0)
    before = path.read_bytes()
    usage.add("alice", 500)
    with monkeypatch.context() as patch:
        refuse_writes(patch, client_limits, errno_)
        with caplog.at_level(logging.WARNING):
            usage.save(100.0)  # no exception: the limits loop keeps running
            usage.save(200.0)
        assert path.read_bytes() == before
        assert usage.save_due(200.0 + client_limits.SAVE_INTERVAL)  # still to be written
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert str(path) in errors[0].getMessage() and os.strerror(errno_) in errors[0].getMessage()
    usage.save(300.0)
    assert client_limits.Usage.load(path).get("alice") == 1500
