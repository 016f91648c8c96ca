"""Shared fixtures: throw-away network namespaces for end-to-end tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from aura_lab import pg
from aura_lab.netns import Lab


def _lab_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = _lab_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.PostgresServer]:
    """One throw-away PostgreSQL server for the whole run (tests take a database each)."""
    reason = pg.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with pg.PostgresServer() as server:
        yield server
