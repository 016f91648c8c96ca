"""What a local account can plant for the commands root runs: nothing that turns them.

A real unprivileged account (made with useradd) owns a folder and fills it with links and
files; root then runs the real command as a subprocess (`aura provision-client`, `aura
client up`), and the test checks what root wrote, where, and as whose.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aura_lab.netns import Lab
from aura_lab.topology import AURA, build, client_with_scratch_resolv_conf
from aura_lab.users import as_user

pytestmark = pytest.mark.e2e

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def mallory() -> Iterator[pwd.struct_passwd]:
    """A fresh local account with no group of Aura's."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    name = f"aura-tm-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--user-group", name],
                   check=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A root folder the account can reach (pytest's own is root's alone, 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="aura-root-commands-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def owned_folder(tmp_path: Path, user: pwd.struct_passwd) -> Path:
    folder = tmp_path / "share"
    folder.mkdir()
    os.chown(folder, user.pw_uid, user.pw_gid)
    return folder


def root_file(path: Path, content: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def plant(user: pwd.struct_passwd, links: dict[Path, Path], files: dict[Path, str]) -> None:
    def action() -> dict[str, Any]:
        for link, target in links.items():
            link.symlink_to(target)
        for path, text in files.items():
            path.write_text(text)
        return {}

    assert as_user(user, action) == {}


def aura(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AURA, "--config", str(config), *argv], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_provisioned_configs_are_roots_and_follow_no_link(
    tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    config = tmp_path / "etc" / "server.yaml"
    init = aura(config, "server", "init", "--public-host", "198.51.100.1",
                "--state-dir", str(tmp_path / "state"), "--runtime-dir", str(tmp_path / "run"))
    assert init.returncode == 0, init.stderr
    share = owned_folder(tmp_path, mallory)
    victim = root_file(tmp_path / "victim", b"keep\n")
    secret = tmp_path / "secret"
    secret.mkdir(mode=0o700)
    plant(mallory, {share / "bob.png": victim, share / "out": secret}, {})

    # A PNG output through a link the folder's owner planted: the link is replaced.
    made = aura(config, "provision-client", "bob", "--format", "qr", "-o", str(share / "bob.png"))
    assert made.returncode == 0, made.stderr
    assert victim.read_bytes() == b"keep\n"
    png = share / "bob.png"
    assert not png.is_symlink() and png.read_bytes().startswith(PNG_MAGIC)
    assert (png.stat().st_uid, png.stat().st_mode & 0o777) == (0, 0o600)

    # A config written into another account's folder stays root's: it holds a private key.
    made = aura(config, "provision-client", "carol", "--format", "wireguard",
                "-o", str(share / "carol.conf"))
    assert made.returncode == 0, made.stderr
    assert (share / "carol.conf").stat().st_uid == 0

    # A folder on the way swapped for a link to a folder of root's: refused, nothing written.
    made = aura(config, "provision-client", "dave", "-o", str(share / "out" / "dave.yaml"))
    assert made.returncode != 0 and "a symlink is refused" in made.stderr, made.stderr
    assert list(secret.iterdir()) == []
    assert "Traceback" not in made.stderr


def test_server_init_follows_no_link_another_account_put_on_the_way(
    tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    """A state directory below a folder another account owns: that account swaps a folder
    on the way for a link to a private folder of root's. `server init` makes its folders
    and sets their owner and mode (0755): not there."""
    share = owned_folder(tmp_path, mallory)
    private = tmp_path / "private"
    (private / "state").mkdir(parents=True)
    private.chmod(0o700)
    (private / "state").chmod(0o700)
    plant(mallory, {share / "aura": private}, {})
    made = aura(tmp_path / "etc" / "server.yaml", "server", "init", "--public-host",
                "198.51.100.1", "--state-dir", str(share / "aura" / "state"),
                "--runtime-dir", str(tmp_path / "run"))
    assert made.returncode != 0 and "a symlink is refused" in made.stderr, made.stderr
    assert (private / "state").stat().st_mode & 0o777 == 0o700
    assert list((private / "state").iterdir()) == []
    assert "Traceback" not in made.stderr


# -- the client ------------------------------------------------------------------------------
def users_client(lab: Lab, tmp_path: Path, user: pwd.struct_passwd,
                 **keys: str) -> tuple[str, Path]:
    """A client config provisioned by root and handed to `user` in the user's own folder,
    as an operator does; with `keys` added by that user. Returns its namespace too."""
    server = build(lab, tmp_path / "server")
    server.folder.mkdir()
    server.init()
    name = f"m{uuid.uuid4().hex[:8]}"  # the default runtime dir is shared: a name of its own
    provisioned = server.provision(name, "aura")
    document = yaml.safe_load(provisioned.read_text())
    del document["runtime_dir"]
    document.update(keys)
    share = owned_folder(tmp_path, user)
    config = share / f"{name}.yaml"
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    os.chown(config, user.pw_uid, user.pw_gid)
    return server.add_client_namespace(), config


def test_a_dns_record_the_configs_owner_planted_is_not_replayed(
    lab: Lab, tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    ns, config = users_client(lab, tmp_path, mallory)
    # Both files hold what the record says root wrote there, so that a replay of it would
    # write through whichever path the client takes: the record's (any file) or its own.
    original = b"root:x:0:0::/root:/bin/sh\n"
    victim = root_file(tmp_path / "passwd", original)
    resolv_conf = root_file(tmp_path / "resolv.conf", original)
    # What the client replays after a crash: "put this content back at this path".
    record = {"version": 1, "strategy": "file", "interface": "aura-x", "path": str(victim),
              "written": original.decode(), "content": "root::0:0::/root:/bin/sh\n"}
    record_path = config.parent / f"{config.stem}.state.dns.json"
    plant(mallory, {}, {record_path: json.dumps(record)})
    log = tmp_path / "client.log"
    client = client_with_scratch_resolv_conf(lab, ns, config, resolv_conf, log)
    try:
        lab.wait_for(lambda: "tunnel device" in log.read_text(), timeout=30,
                     what="the client past its DNS recovery")
    finally:
        lab.stop(client)
    assert victim.read_bytes() == original and resolv_conf.read_bytes() == original
    assert f"ignoring the DNS record {record_path}: not a file only this account" in \
        log.read_text()


def test_a_config_another_account_owns_may_not_say_where_root_writes(
    lab: Lab, tmp_path: Path, mallory: pwd.struct_passwd
) -> None:
    victim = root_file(tmp_path / "shadow", b"root:secret\n", 0o600)
    ns, config = users_client(lab, tmp_path, mallory, state_file=str(victim))
    log = tmp_path / "client.log"
    resolv_conf = root_file(tmp_path / "resolv.conf", b"nameserver 192.0.2.53\n")
    client = client_with_scratch_resolv_conf(lab, ns, config, resolv_conf, log)
    try:
        status = client.wait(30)
    finally:
        lab.stop(client)
    assert status == 78, log.read_text()
    assert f"{config}: state_file: expected no state_file in a config uid " \
        f"{mallory.pw_uid}" in log.read_text()
    assert victim.read_bytes() == b"root:secret\n" and not Path(f"{victim}.lock").exists()
