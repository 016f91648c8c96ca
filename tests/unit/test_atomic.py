"""Atomic writes: who owns what root writes for the services."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import (
    LockBusy,
    locked,
    read_bounded,
    read_state_file,
    write_atomic,
)
from aura_lab.users import as_user
from tests.unit.held_lock import held_elsewhere

REPO = str(Path(__file__).resolve().parents[2])


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


def _service_folder(tmp_path: Path) -> Path:
    """A folder another account (nobody) owns and so may fill with traps."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act for another account")
    tmp_path.chmod(0o755)
    folder = tmp_path / "state"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    return folder


def test_a_symlinked_lock_file_is_refused_and_its_target_keeps_its_owner(tmp_path: Path) -> None:
    folder = _service_folder(tmp_path)
    shadow = tmp_path / "shadow"
    shadow.write_bytes(b"root:secret\n")
    shadow.chmod(0o600)
    (folder / "peers.json.lock").symlink_to(shadow)
    with pytest.raises(AuraError, match="symlink"), locked(folder / "peers.json"):
        pass
    status = shadow.stat()
    assert (status.st_uid, status.st_gid, status.st_mode & 0o777) == (0, 0, 0o600)


def test_a_fifo_in_place_of_the_lock_file_is_refused_without_hanging(tmp_path: Path) -> None:
    folder = _service_folder(tmp_path)
    os.mkfifo(folder / "leases.json.lock")
    script = (
        "import sys\n"
        "from aura_common.state.atomic import locked\n"
        "with locked(sys.argv[1]):\n"
        "    pass\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(folder / "leases.json")], capture_output=True,
        env={**os.environ, "PYTHONPATH": REPO}, timeout=30,
    )  # fmt: skip
    assert child.returncode != 0
    assert b"not a regular file" in child.stderr


def test_an_existing_lock_file_is_not_chowned(tmp_path: Path) -> None:
    folder = _service_folder(tmp_path)
    lock = folder / "peers.json.lock"
    lock.write_bytes(b"")
    os.chown(lock, 0, 0)  # a hard link to a root file would look like this
    with locked(folder / "peers.json"):
        pass
    assert lock.stat().st_uid == 0


def test_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(AuraError, match="symlink"):
        write_atomic(tmp_path / "link" / "peers.json", b"{}")
    with pytest.raises(AuraError, match="symlink"), locked(tmp_path / "link" / "peers.json"):
        pass
    assert list(real.iterdir()) == []


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / "peers.json").symlink_to(victim)
    write_atomic(tmp_path / "peers.json", b"{}")
    assert victim.read_bytes() == b"keep"
    assert not (tmp_path / "peers.json").is_symlink()


def test_a_state_file_is_read_only_when_it_is_a_small_regular_file_not_a_link(
    tmp_path: Path,
) -> None:
    """What a service account can plant in its folder for root to read: a link to a file it
    may not read, a FIFO nobody writes, an endless or huge file. Each is one error naming
    the file, at once and without reading more than the bound."""
    folder = _service_folder(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:secret\n")
    (folder / "linked.json").symlink_to(secret)
    (folder / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.json")
    (folder / "huge.json").write_bytes(b" " * 2049)
    (folder / "fits.json").write_bytes(b" " * 2048)
    for name, why in (("linked.json", "symlink"), ("zero.json", "symlink"),
                      ("fifo.json", "regular file"), ("huge.json", "at most 2048 bytes")):
        with pytest.raises(ConfigError, match=why) as error:
            read_state_file(str(folder / name), limit=2048)
        assert str(folder / name) in str(error.value)
    assert read_state_file(str(folder / "fits.json"), limit=2048) == b" " * 2048
    assert read_state_file(str(folder / "missing.json")) is None


def test_without_waiting_a_held_lock_raises_at_once(tmp_path: Path) -> None:
    path = tmp_path / "leases.json"
    with held_elsewhere(path):
        started = time.monotonic()
        with pytest.raises(LockBusy), locked(path, wait=False):
            pass
        assert time.monotonic() - started < 1
    with locked(path, wait=False):
        pass


def test_a_new_lock_file_is_readable_by_the_group_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        with locked(tmp_path / "runtime.json"):
            pass
    finally:
        os.umask(old)
    assert (tmp_path / "runtime.json.lock").stat().st_mode & 0o777 == 0o640


def test_a_folder_on_the_way_swapped_for_a_link_is_refused(tmp_path: Path) -> None:
    """O_NOFOLLOW guards the last component only: the owner of a folder higher up could
    turn `<its folder>/vpn` into a link to a folder of root's, and root would write there."""
    folder = _service_folder(tmp_path)
    roots = tmp_path / "etc"
    roots.mkdir()
    (roots / "peers.json.lock").write_bytes(b"")  # only in the lock's test: opened, not made
    (roots / "state.json").write_bytes(b"{}")
    (folder / "vpn").symlink_to(roots)
    os.lchown(folder / "vpn", 65534, 65534)
    with pytest.raises(AuraError, match="a symlink is refused"):
        write_atomic(folder / "vpn" / "peers.json", b"{}")
    with pytest.raises(AuraError, match="a symlink is refused"), \
            locked(folder / "vpn" / "peers.json"):
        pass
    with pytest.raises(ConfigError, match="a symlink is refused"):
        read_state_file(str(folder / "vpn" / "state.json"))
    assert sorted(p.name for p in roots.iterdir()) == ["peers.json.lock", "state.json"]


def test_a_link_on_the_way_only_root_could_make_is_followed(tmp_path: Path) -> None:
    """/var/run -> /run: a link in a folder no other account can change is followed; in a
    sticky folder (/tmp), so is one of root's own, but not one another account made there."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act for another account")
    real = tmp_path / "real"
    (real / "aura").mkdir(parents=True)
    (tmp_path / "run").symlink_to("real")
    write_atomic(tmp_path / "run" / "aura" / "runtime.json", b"{}")
    assert read_state_file(str(tmp_path / "run" / "aura" / "runtime.json")) == b"{}"
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "roots").symlink_to(real)
    (sticky / "theirs").symlink_to(real)
    os.lchown(sticky / "theirs", 65534, 65534)
    with locked(sticky / "roots" / "aura" / "runtime.json"):
        pass
    with pytest.raises(AuraError, match="a symlink is refused"):
        write_atomic(sticky / "theirs" / "aura" / "leases.json", b"{}")
    assert sorted(p.name for p in (real / "aura").iterdir()) == ["runtime.json",
                                                                "runtime.json.lock"]


def test_a_file_in_a_folder_one_may_search_but_not_list_is_read() -> None:
    """A service reads its credentials from a folder it may search but perhaps not list:
    reaching the file one folder at a time must need no more than a plain open() does."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act for another account")
    folder = Path(tempfile.mkdtemp(prefix="aura-search-only-"))
    try:
        folder.chmod(0o711)
        (folder / "password").write_bytes(b"secret")
        (folder / "password").chmod(0o644)
        nobody = pwd.getpwnam("nobody")
        outcome = as_user(nobody, lambda: {
            "read": read_bounded(str(folder / "password"), 64, "a password").decode()})
        assert outcome == {"read": "secret"}
    finally:
        shutil.rmtree(folder)


def test_a_file_already_the_right_owners_is_not_chowned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under aura-client@.service chown is filtered out (EPERM); the client's own files need none.
    def refused(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    target = tmp_path / "alice.state.dns.json"
    write_atomic(target, b"{}", owner=(os.geteuid(), os.getegid()))
    assert target.read_bytes() == b"{}"
