"""Pushed DNS on the Linux client: each strategy applies and undoes, the undo record survives
a crash and is replayed at the next start, and the system is detected."""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aura_common.errors import AuraError
from services.client import dns as dns_module
from services.client.dns import SystemDns, detect, strategies

SERVERS = (ipaddress.ip_address("10.77.0.1"), ipaddress.ip_address("fd77:7777::1"))
ORIGINAL = "nameserver 192.0.2.53\nsearch example.net\n"


class FakeRunner:
    """Records the resolver commands; checks the undo record exists before any change."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.calls: list[tuple[list[str], str | None]] = []
        self.fail = False

    def __call__(self, argv: Sequence[str], stdin: str | None) -> None:
        if argv[1] in ("dns", "-a"):
            assert self.record.exists(), "changed the system before storing how to undo it"
        self.calls.append((list(argv), stdin))
        if self.fail:
            raise AuraError(f"`{argv[0]}` failed: no such link")


@pytest.fixture
def record(tmp_path: Path) -> Path:
    return tmp_path / "alice.state.dns.json"


@pytest.fixture
def runner(record: Path) -> FakeRunner:
    return FakeRunner(record)


def system(record: Path, runner: FakeRunner, chosen: str, resolv_conf: Path) -> SystemDns:
    return SystemDns(str(record), chosen, strategies(runner, str(resolv_conf)))


def test_resolvectl_sets_the_link_and_reverts_it(
    record: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    dns = system(record, runner, "resolvectl", tmp_path / "resolv.conf")
    dns.apply("aura-alice", SERVERS)
    assert runner.calls == [
        (["resolvectl", "dns", "aura-alice", "10.77.0.1", "fd77:7777::1"], None),
        (["resolvectl", "domain", "aura-alice", "~."], None),
    ]
    assert json.loads(record.read_text())["strategy"] == "resolvectl"
    dns.apply("aura-alice", SERVERS)
    assert len(runner.calls) == 2, "the same servers again change nothing"
    dns.restore()
    assert runner.calls[-1] == (["resolvectl", "revert", "aura-alice"], None)
    assert not record.exists() and dns.applied == ()


def test_resolvconf_adds_and_deletes_the_interface_record(
    record: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    dns = system(record, runner, "resolvconf", tmp_path / "resolv.conf")
    dns.apply("aura-alice", SERVERS[:1])
    assert runner.calls == [(["resolvconf", "-a", "aura-alice"], "nameserver 10.77.0.1\n")]
    dns.apply("aura-alice", SERVERS)  # new servers: the old record goes first
    assert [c[0] for c in runner.calls[1:]] == [
        ["resolvconf", "-d", "aura-alice"], ["resolvconf", "-a", "aura-alice"]]
    dns.restore()
    assert runner.calls[-1][0] == ["resolvconf", "-d", "aura-alice"] and not record.exists()


def test_file_is_rewritten_and_given_back(record: Path, runner: FakeRunner,
                                           tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    dns = system(record, runner, "file", conf)
    dns.apply("aura-alice", SERVERS)
    lines = conf.read_text().splitlines()
    assert lines[1:] == ["nameserver 10.77.0.1", "nameserver fd77:7777::1"]
    assert oct(conf.stat().st_mode & 0o777) == "0o644"
    dns.restore()
    assert conf.read_text() == ORIGINAL and not record.exists() and runner.calls == []



def test_file_in_a_read_only_folder_is_rewritten_in_place(
        record: Path, runner: FakeRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # aura-client@.service: /etc is read-only, only resolv.conf itself is writable, so no
    # temporary file can be made beside it (EROFS).
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    write_atomic = dns_module.write_atomic

    def read_only_folder(path: str, data: bytes, **kwargs: Any) -> None:
        if path == str(conf):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        write_atomic(path, data, **kwargs)

    monkeypatch.setattr(dns_module, "write_atomic", read_only_folder)
    inode = conf.stat().st_ino
    dns = system(record, runner, "file", conf)
    dns.apply("aura-alice", SERVERS)
    assert conf.read_text().splitlines()[1:] == ["nameserver 10.77.0.1", "nameserver fd77:7777::1"]
    dns.restore()
    assert conf.read_text() == ORIGINAL and conf.stat().st_ino == inode and not record.exists()

def test_file_that_was_a_symlink_or_absent_comes_back_so(
    record: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    conf = tmp_path / "resolv.conf"
    os.symlink("../run/resolvconf/resolv.conf", conf)
    dns = system(record, runner, "file", conf)
    dns.apply("aura-alice", SERVERS)
    assert not conf.is_symlink() and "10.77.0.1" in conf.read_text()
    dns.restore()
    assert os.readlink(conf) == "../run/resolvconf/resolv.conf"
    conf.unlink()
    dns.apply("aura-alice", SERVERS)
    dns.restore()
    assert not os.path.lexists(conf)


def test_file_changed_by_someone_else_is_left_alone(
    record: Path, runner: FakeRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    dns = system(record, runner, "file", conf)
    dns.apply("aura-alice", SERVERS)
    conf.write_text("nameserver 198.51.100.53\n")  # e.g. DHCP renewed meanwhile
    with caplog.at_level(logging.WARNING):
        dns.restore()
    assert conf.read_text() == "nameserver 198.51.100.53\n"
    assert "changed since the tunnel set its DNS" in caplog.text and not record.exists()


def test_a_crashed_run_is_undone_at_the_next_start(
    record: Path, runner: FakeRunner, tmp_path: Path
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(ORIGINAL)
    system(record, runner, "file", conf).apply("aura-alice", SERVERS)  # then killed
    assert conf.read_text() != ORIGINAL
    system(record, runner, "file", conf).recover()
    assert conf.read_text() == ORIGINAL and not record.exists()
    # the record names its strategy, so a system that changed since is still undone right
    system(record, runner, "resolvectl", conf).apply("aura-alice", SERVERS)
    system(record, runner, "file", conf).recover()
    assert runner.calls[-1][0] == ["resolvectl", "revert", "aura-alice"]


def test_a_failing_undo_is_logged_and_the_record_dropped(
    record: Path, runner: FakeRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dns = system(record, runner, "resolvectl", tmp_path / "resolv.conf")
    dns.apply("aura-alice", SERVERS)
    runner.fail = True  # the link vanished with the TUN: resolved forgot it already
    with caplog.at_level(logging.ERROR):
        dns.restore()
    assert "could not restore the DNS settings" in caplog.text and not record.exists()


def test_no_servers_means_no_change(record: Path, runner: FakeRunner, tmp_path: Path) -> None:
    dns = system(record, runner, "resolvectl", tmp_path / "resolv.conf")
    dns.apply("aura-alice", ())
    assert runner.calls == [] and not record.exists()


def test_detect(tmp_path: Path) -> None:
    tools = {"resolvectl": "/usr/bin/resolvectl", "resolvconf": "/usr/sbin/resolvconf"}
    resolved = tmp_path / "resolve"
    assert detect(str(resolved), tools.get) == "resolvconf", "resolved installed, not running"
    resolved.mkdir()
    assert detect(str(resolved), tools.get) == "resolvectl"
    assert detect(str(resolved), {"resolvconf": "/sbin/resolvconf"}.get) == "resolvconf"
    assert detect(str(resolved), lambda tool: None) == "file"
