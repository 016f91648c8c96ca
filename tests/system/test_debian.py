"""README's two commands, as typed, on a plain Debian 12 booted under systemd.

The container is the cached bookworm image (minbase, systemd, Debian's own python3 with PEP 668
in force) holding a copy of this tree. `./run` does everything a fresh machine needs itself:
`apt-get install` of its Debian packages and a virtual environment for the Python ones. The
container keeps a private network namespace; apt and pip reach the package hosts through an
allow-listed proxy (`tests/system/proxy.py`) via `http_proxy`/`https_proxy`, and pip gets the
host's pip configuration, CA bundle and local indexes, bound read-only, and nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from aura_lab.netns import Lab
from tests.system import container as containers

pytestmark = pytest.mark.slow

TOP = Path(__file__).resolve().parents[2]
TREE = "/root/aura"
PROXY_PORT = 3128
# The Debian mirror the image was built from, and PyPI.
PACKAGE_HOSTS = (urlsplit(containers.MIRROR).hostname or "deb.debian.org", "pypi.org",
                 "files.pythonhosted.org")


@dataclass
class Debian:
    box: containers.Container
    env: dict[str, str]

    def run(self, command: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        result = self.box.run(f"cd {TREE} && {command}", check=False, timeout=timeout,
                              env=self.env)
        elapsed = time.monotonic() - started
        print(f"`{command}` in the container: exit {result.returncode} after {elapsed:.0f}s")
        return result, elapsed


def host_pip_configuration() -> tuple[list[str], dict[str, str]]:
    """The host's pip configuration: its files and every local path they name (CA bundle,
    constraints, file:// indexes, find-links), to bind read-only, and its PIP_* variables."""
    pip = [sys.executable, "-m", "pip"]
    debug = subprocess.run([*pip, "config", "debug"], capture_output=True, text=True,
                           check=True, timeout=60).stdout
    paths = set(re.findall(r"^\s+(/\S+), exists: True$", debug, re.MULTILINE))
    listing = subprocess.run([*pip, "config", "list"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    for value in re.findall(r"^\S+='(.*)'$", listing, re.MULTILINE):
        for word in value.split():
            path = word.removeprefix("file://")
            if word.startswith("file://"):
                # A local index's pages link to files beside it (../files/...).
                path = os.path.dirname(path.rstrip("/"))
            if path.startswith("/") and os.path.exists(path):
                paths.add(path)
    env = {key: value for key, value in os.environ.items() if key.startswith("PIP_")}
    return sorted(paths), env


def copy_tree(box: containers.Container) -> None:
    """The files git knows of (committed or not), as a fresh clone would have them."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=TOP, capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        if (TOP / name).is_file():
            box.copy_in(TOP / name, f"{TREE}/{name}")


@pytest.fixture(scope="module")
def debian() -> Iterator[Debian]:
    reason = containers.unavailable()
    if reason:
        pytest.skip(reason)
    if subprocess.run(["git", "-C", str(TOP), "rev-parse"], capture_output=True).returncode:
        pytest.skip("needs a git checkout")
    binds, pip_env = host_pip_configuration()
    lab = Lab()
    proxy: subprocess.Popen[str] | None = None
    box: containers.Container | None = None
    try:
        netns = lab.namespace("deb")
        proxy = subprocess.Popen(
            [sys.executable, "-m", "tests.system.proxy", netns, str(PROXY_PORT),
             *PACKAGE_HOSTS],
            cwd=TOP, stdout=subprocess.PIPE, text=True,
        )
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        box = containers.Container(netns, read_only_binds=binds)
        box.start()
        copy_tree(box)
        url = f"http://127.0.0.1:{PROXY_PORT}"
        yield Debian(box, {**pip_env, "http_proxy": url, "https_proxy": url})
    finally:
        if box is not None:
            box.stop()
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        lab.close()


def test_debian_python_is_externally_managed(debian: Debian) -> None:
    # The premise: Debian's python3 refuses `pip install` outside a virtual environment.
    marker = debian.box.run(["python3", "-c", (
        "import sysconfig, os; print(os.path.exists(os.path.join("
        "sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")]).stdout.strip()
    assert marker == "True"
    assert debian.box.run(["test", "-e", f"{TREE}/.venv"], check=False).returncode != 0


def test_run_demo_once(debian: Debian) -> None:
    result, _ = debian.run("./run demo --once", timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "all checks passed" in output, output[-3000:]
    # Everything went into the project's environment, nothing into Debian's python.
    assert debian.box.run(["test", "-x", f"{TREE}/.venv/bin/aura"], check=False).returncode == 0
    system_site = debian.box.run(["python3", "-c", "import msgpack"], check=False)
    assert system_site.returncode != 0, "a Python package landed in Debian's python3"


def test_run_tests_unit(debian: Debian) -> None:
    result, _ = debian.run("./run tests tests/unit -q -x -p no:cacheprovider", timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"\d+ passed", output), output[-3000:]


def test_run_tests_fails_when_nothing_is_collected(debian: Debian) -> None:
    result, _ = debian.run("./run tests tests/unit -q -p no:cacheprovider -k no_such_test",
                           timeout=300)
    assert result.returncode == 5, result.stdout[-2000:] + result.stderr[-2000:]
