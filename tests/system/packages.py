"""Build the .deb and .rpm for system tests, reusing dist/ while it is newer than its inputs."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
INPUTS = ("pyproject.toml", "aura_common", "services", "units", "packaging")


def version() -> str:
    with open(TOP / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def output(fmt: str) -> Path:
    v = version()
    name = f"aura_{v}_amd64.deb" if fmt == "deb" else f"aura-{v}.x86_64.rpm"
    return TOP / "dist" / name


def _newest_input() -> float:
    newest = 0.0
    for name in INPUTS:
        path = TOP / name
        files = [path] if path.is_file() else path.rglob("*")
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                newest = max(newest, file.stat().st_mtime)
    return newest


def unavailable(fmt: str) -> str | None:
    tools = ["dpkg-deb", "/usr/bin/python3.11"] + (["rpmbuild", "rpm"] if fmt == "rpm" else [])
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def build(fmt: str, timeout: float = 600) -> Path:
    """The package file, rebuilt with packaging/build unless dist/ already has a fresh one."""
    out = output(fmt)
    if out.exists() and out.stat().st_mtime > _newest_input():
        return out
    result = subprocess.run(
        [str(TOP / "packaging" / "build"), fmt], capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"packaging/build {fmt} failed:\n{result.stdout}\n{result.stderr}")
    assert result.stdout.strip().splitlines()[-1] == str(out), result.stdout
    return out
