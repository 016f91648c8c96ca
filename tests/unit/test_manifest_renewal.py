"""The renewal decision behind `aura sign-bridges --renew-within` (aura-manifest-renew.timer)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from aura_common.pki import ca
from aura_common.pki.manifest import HostPorts, Manifest, sign
from aura_common.state.atomic import write_atomic
from services.cli.bridges import renewal_due, renewal_reason

NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
WINDOW = datetime.timedelta(days=30)


@pytest.mark.parametrize(("left", "due"), [
    (datetime.timedelta(days=200), False),
    (datetime.timedelta(days=30, seconds=1), False),
    (datetime.timedelta(days=30), True),
    (datetime.timedelta(days=1), True),
    (-datetime.timedelta(days=3), True),  # already expired: renew, clients refuse it now
])
def test_renewal_is_due_within_the_window(left: datetime.timedelta, due: bool) -> None:
    assert renewal_due(NOW + left, NOW, WINDOW) is due


def make_config(tmp_path: Path) -> ServerConfig:
    config = ServerConfig.default(
        "vpn.test", state_dir=str(tmp_path / "state"), runtime_dir=str(tmp_path / "run"),
        key_dir=str(tmp_path / "keys"))
    (tmp_path / "state" / "signer").mkdir(parents=True)
    ca.create_ca(tmp_path / "keys")
    return config


def store(config: ServerConfig, issued: datetime.datetime, days: int, serial: int = 4) -> None:
    manifest = Manifest.create(serial=serial, issued=issued, expires_days=days,
                               server_public_key=bytes(32), endpoints=[HostPorts("vpn.test", 8443)])
    signed = sign(manifest, ca.load_ca_private_key(config.key_dir))
    write_atomic(config.manifest_file, signed.to_json().encode(), 0o644)


def test_a_fresh_manifest_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    store(config, NOW - datetime.timedelta(days=10), 365)
    assert renewal_reason(config, NOW, WINDOW) is None
    assert "serial 4 expires 2027-05-22" in capsys.readouterr().out


def test_a_manifest_close_to_expiry_is_renewed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store(config, NOW - datetime.timedelta(days=340), 365)
    assert renewal_reason(config, NOW, WINDOW) == "serial 4 expires 2026-06-26 12:00 UTC"


def test_no_manifest_is_renewed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert "no manifest yet" in (renewal_reason(config, NOW, WINDOW) or "")


def test_a_manifest_from_another_ca_is_renewed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    store(config, NOW, 365)
    ca.create_ca(tmp_path / "other")
    other = ServerConfig.default("vpn.test", state_dir=config.state_dir,
                                 key_dir=str(tmp_path / "other"))
    assert "another CA" in (renewal_reason(other, NOW, WINDOW) or "")


def test_a_damaged_manifest_is_renewed(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    Path(config.manifest_file).write_text("{not json")
    assert renewal_reason(config, NOW, WINDOW) is not None
