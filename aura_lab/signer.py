"""aura-signer alone, as a real process: a server config made by `aura server init` in a
private temp dir, and the signer started and stopped on it (`server` and `running` are the
pytest fixtures)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aura_common.pki.manifest import SignedManifest

PYTHON = sys.executable


class SignerServer:
    """A server config made by `aura server init` in a private temp dir, and its signer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "server.yaml"
        self.state = root / "state"
        self.run_dir = root / "run"
        self.socket = self.run_dir / "signer.sock"
        self.signer: subprocess.Popen[bytes] | None = None
        self.log = root / "signer.log"
        self.log_start = 0
        self.aura("server", "init", "--public-host", "vpn.test", "--state-dir", str(self.state),
                  "--runtime-dir", str(self.run_dir))  # fmt: skip

    def aura(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [PYTHON, "-m", "services.cli.main", "--config", str(self.config), *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"aura {' '.join(argv)}: {result.stdout}{result.stderr}")
        return result

    def start_signer(self, **popen: Any) -> subprocess.Popen[bytes]:
        self.log_start = len(self.log.read_text()) if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.signer = subprocess.Popen(
                popen.pop("argv", [PYTHON, "-m", "services.signer", "--config", str(self.config)]),
                stdout=log, stderr=subprocess.STDOUT, **popen,
            )  # fmt: skip
        return self.signer

    def wait_for_socket(self) -> None:
        """Until the signer listens (the file appears at bind, before listen)."""
        self.wait_for_log("signing bridge manifests on")

    def wait_for_log(self, text: str) -> None:
        """Until this run of the signer has logged `text`."""
        deadline = time.monotonic() + 20
        while text not in self.log.read_text()[self.log_start :]:
            assert self.signer is not None and self.signer.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"the signer never logged {text!r}"
            time.sleep(0.05)

    def stop_signer(self) -> None:
        if self.signer is not None and self.signer.poll() is None:
            self.signer.send_signal(signal.SIGTERM)
            try:
                self.signer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.signer.kill()
                self.signer.wait()
        self.signer = None

    def manifest(self) -> SignedManifest:
        return SignedManifest.from_json((self.state / "signer" / "manifest.json").read_text())


@pytest.fixture
def server() -> Iterator[SignerServer]:
    if os.geteuid() != 0:
        pytest.skip("needs root (socket ownership, a throw-away user)")
    # Not under pytest's tmp_path, which is private to root: a test user must be able to reach
    # the socket once the test opens the directories.
    root = Path(tempfile.mkdtemp(prefix="aura-signer-"))
    server = SignerServer(root)
    try:
        yield server
    finally:
        server.stop_signer()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running(server: SignerServer) -> SignerServer:
    server.start_signer()
    server.wait_for_socket()
    return server
