"""Atomic writes: who owns what root writes for the services."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aura_common.atomic import locked, write_atomic


def test_root_writing_into_a_service_accounts_folder_hands_it_the_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to own files for another account")
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    target = folder / "peers.json"
    with locked(target):
        write_atomic(target, b"{}")
    assert (target.stat().st_uid, target.stat().st_gid) == (65534, 65534)
    assert target.stat().st_mode & 0o777 == 0o600
    assert Path(str(target) + ".lock").stat().st_uid == 65534
    write_atomic(tmp_path / "root.json", b"{}")
    assert (tmp_path / "root.json").stat().st_uid == 0
