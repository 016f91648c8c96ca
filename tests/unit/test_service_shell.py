"""The service shell's exit on a missing config: status 78 and a line saying what to run."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_common import log as aura_log
from aura_common import service
from aura_common.config import ServerConfig


@pytest.fixture
def stderr_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aura_log, "journal_available", lambda: False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


async def never_started(config: ServerConfig, args: argparse.Namespace) -> None:
    raise AssertionError("the service ran without a config")


def test_missing_config_exits_78_and_names_aura_server_init(
    tmp_path: Path, stderr_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "server.yaml"
    code = service.run_service("aura-test", "test", never_started, ["--config", str(missing)])
    assert code == service.EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(missing) in err and "`aura server init` creates it" in err, err


def test_a_broken_config_gets_no_init_hint(
    tmp_path: Path, stderr_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "server.yaml"
    broken.write_text("version: [\n")
    code = service.run_service("aura-test", "test", never_started, ["--config", str(broken)])
    assert code == service.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "valid YAML" in err and "aura server init" not in err, err
