"""The test lab itself: closing it leaves nothing of the test running."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from aura_lab.netns import Lab

pytestmark = pytest.mark.e2e


def running(pid: str) -> bool:
    """Alive and not a zombie waiting for whoever adopted it to reap it."""
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


def test_close_ends_a_daemon_that_detached_itself(lab: Lab) -> None:
    ns = lab.namespace("daemon")
    lab.run(ns, ["sh", "-c", "setsid -f sleep 300 </dev/null >/dev/null 2>&1"])
    [pid] = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                           check=True).stdout.split()
    assert Path(f"/proc/{pid}").exists()
    lab.close()
    assert not running(pid), "a process of the test outlived its lab"
    assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                    check=True).stdout
