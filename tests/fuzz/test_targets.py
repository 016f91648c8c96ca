"""A short run of every fuzz target: its seed corpus (regressions included) plus new inputs.

The long runs (a million inputs each) are `python3 -m fuzz TARGET --runs 1000000`
(docs/fuzzing.md); this keeps every target and its contract working in each test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import TARGETS

REPO = Path(__file__).resolve().parents[2]
RUNS = 3000
SECONDS = 8


@pytest.mark.fuzz
@pytest.mark.parametrize("target", TARGETS)
def test_target_keeps_its_contract(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuzz", target, "--runs", str(RUNS), "--seconds", str(SECONDS),
         "--artifacts", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Done " in output, output[-4000:]
    assert not list(tmp_path.iterdir()), "crash inputs were written"
