"""A run killed while its container is booted: the next container started reclaims it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aura_lab import leftovers
from aura_lab.netns import Lab
from tests.system import container as containers

pytestmark = pytest.mark.slow

REPO = str(Path(__file__).resolve().parents[2])
# Boots a container in the namespace given, prints its folder, nspawn's pid and the
# container's PID 1, and dies without stopping it.
KILLED_RUN = """
import os, signal, sys
from tests.system.container import Container
box = Container(sys.argv[1])
box.start()
print(box.run_dir, box.process.pid, box.leader, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_container_is_reclaimed_and_a_live_runs_kept(lab: Lab) -> None:
    reason = containers.unavailable()
    if reason:
        pytest.skip(reason)
    child = subprocess.run([sys.executable, "-c", KILLED_RUN, lab.namespace("box")],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": REPO})  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr
    folder, nspawn, leader = child.stdout.split()
    run_dir = Path(folder)
    assert (run_dir / "root").is_mount()
    assert leftovers.running(int(nspawn)) and leftovers.running(int(leader))
    live = containers.RUNS_DIR / f"aura-live-{uuid.uuid4().hex[:8]}"  # a run still going
    live.mkdir(parents=True)
    leftovers.mark(live)
    try:
        reclaimed = containers.reclaim_abandoned()
        assert run_dir in reclaimed and live not in reclaimed
        assert not leftovers.running(int(leader)) and not leftovers.running(int(nspawn))
        assert not run_dir.exists() and live.exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert str(run_dir) not in mounts
    finally:
        for path in live.iterdir():
            path.unlink()
        live.rmdir()
