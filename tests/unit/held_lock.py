"""A state file's lock (`aura_common.state.atomic.locked`) held by another process, as another
account's process could hold it: a separate process, not a fork, which would share this
one's lock file description."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
HOLD = (
    "import sys, time\n"
    "from aura_common.state.atomic import locked\n"
    "with locked(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


@contextlib.contextmanager
def held_elsewhere(path: str | Path) -> Iterator[subprocess.Popen[bytes]]:
    """The lock of `path` held by a child until the block ends (or the test kills it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()
