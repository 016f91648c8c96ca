"""The test lab itself: closing it leaves nothing of the test running, and a run that was
killed leaves nothing the next run does not reclaim."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from aura_lab import pg
from aura_lab.leftovers import running
from aura_lab.netns import Lab

pytestmark = pytest.mark.e2e

REPO = str(Path(__file__).resolve().parents[2])


def test_close_ends_a_daemon_that_detached_itself(lab: Lab) -> None:
    ns = lab.namespace("daemon")
    lab.run(ns, ["sh", "-c", "setsid -f sleep 300 </dev/null >/dev/null 2>&1"])
    [pid] = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                           check=True).stdout.split()
    assert Path(f"/proc/{pid}").exists()
    lab.close()
    assert not running(int(pid)), "a process of the test outlived its lab"
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout


# A run killed while its PostgreSQL server runs: it prints the server's folder and dies.
KILLED_RUN = """
import os, signal
from aura_lab.pg import PostgresServer
print(PostgresServer().directory, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_postgres_is_reclaimed_by_the_next_and_a_live_ones_kept() -> None:
    reason = pg.unavailable()
    if reason:
        pytest.skip(reason)
    child = subprocess.run([sys.executable, "-c", KILLED_RUN], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    leaked = Path(child.stdout.strip())
    postmaster = int((leaked / "data" / "postmaster.pid").read_text().split()[0])
    assert running(postmaster), "the killed run's server should still run"
    unmarked = Path(tempfile.mkdtemp(prefix=pg.PREFIX))  # being made by a run right now
    try:
        with pg.PostgresServer() as live:  # the next run's server reclaims on its way
            assert not leaked.exists() and not running(postmaster)
            assert live.directory not in pg.reclaim_abandoned()
            with live.superuser() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert unmarked.exists()
    finally:
        shutil.rmtree(unmarked, ignore_errors=True)
