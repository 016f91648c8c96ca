"""The .rpm, built from the same payload as the .deb: its file list and scriptlets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.system import packages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rpm() -> Path:
    reason = packages.unavailable("rpm")
    if reason:
        pytest.skip(reason)
    return packages.build("rpm")


def _rpm_query(*args: str) -> str:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_rpm_carries_units_environment_and_system_entries(rpm: Path) -> None:
    files = set(_rpm_query("-qlp", str(rpm)).split())
    units = {f"/usr/lib/systemd/system/{name}" for name in (
        "aura.target", "aura-client@.service", "aura-manifest-renew.service",
        "aura-manifest-renew.timer",
        *(f"aura-{role}.{kind}" for role in ("router", "signer", "udp", "tcp", "quic")
          for kind in ("service", "socket")),
    )}
    assert units <= files, units - files
    for path in (
        "/usr/bin/aura", "/opt/aura/venv/bin/python", "/opt/aura/venv/pyvenv.cfg",
        *(f"/opt/aura/venv/bin/aura-{role}" for role in ("router", "signer", "udp", "tcp", "quic")),
        "/usr/lib/sysusers.d/aura.conf", "/usr/lib/tmpfiles.d/aura.conf",
        "/usr/lib/sysctl.d/60-aura.conf", "/usr/share/man/man1/aura.1.gz",
        "/usr/lib/systemd/system-generators/aura-generator", "/opt/aura/venv/bin/aura-generator",
    ):
        assert path in files, path
    site = "/opt/aura/venv/lib/python3.11/site-packages"
    for package in ("cryptography", "qh3", "msgpack", "yaml", "pyroute2", "aura_common",
                    "services"):
        assert f"{site}/{package}/__init__.py" in files, package


def test_rpm_metadata_and_scriptlets(rpm: Path) -> None:
    info = _rpm_query("-qip", str(rpm))
    assert f"Version     : {packages.version()}" in info
    assert "Architecture: x86_64" in info
    requires = _rpm_query("-qRp", str(rpm))
    for need in ("/usr/bin/python3.11", "systemd", "iproute", "nftables"):
        assert need in requires, requires

    scripts = _scriptlets(_rpm_query("-qp", "--scripts", str(rpm)))
    assert set(scripts) == {"postinstall", "preuninstall", "postuninstall"}, scripts.keys()
    post = scripts["postinstall"]
    assert "systemd-sysusers aura.conf" in post
    assert "systemd-tmpfiles --create aura.conf" in post
    assert "systemctl enable" in post
    assert "systemctl start" not in post, "installing must not start the service"
    assert "aura_stop" in scripts["preuninstall"]
    assert "systemctl stop" in scripts["preuninstall"]
    assert "daemon-reload" in scripts["postuninstall"]
    for name, body in scripts.items():
        check = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
        assert check.returncode == 0, f"{name}: {check.stderr}"


def _scriptlets(text: str) -> dict[str, str]:
    """`rpm --scripts` output as {"postinstall": body, ...}."""
    parts = re.split(r"^(\w+) scriptlet \(using /bin/sh\):$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))
