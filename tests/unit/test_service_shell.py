"""The process shell shared by the services and the client: status 78 and a line saying what
to run on a config error, and signals that stop the work the way it asks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from aura_common.config import ServerConfig
from aura_common.service import log as aura_log
from aura_common.service import shell
from services.client import process


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
    code = shell.run_service("aura-test", "test", never_started, ["--config", str(missing)])
    assert code == shell.EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(missing) in err and "`aura server init` creates it" in err, err


def test_a_broken_config_gets_no_init_hint(
    tmp_path: Path, stderr_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "server.yaml"
    broken.write_text("version: [\n")
    code = shell.run_service("aura-test", "test", never_started, ["--config", str(broken)])
    assert code == shell.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "valid YAML" in err and "aura server init" not in err, err


def test_the_client_process_exits_78_on_a_config_error(
    tmp_path: Path, stderr_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "client.yaml"
    broken.write_text("version: [\n")
    assert process.run(str(broken)) == shell.EXIT_CONFIG
    err = capsys.readouterr().err
    assert "configuration error" in err and str(broken) in err, err


def test_a_signal_calls_the_work_s_own_stop_instead_of_cancelling_it() -> None:
    finished = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def work() -> None:
            await stop.wait()
            finished.append("cleaned up")  # a cancelled work would not get here

        asyncio.get_running_loop().call_later(0.01, os.kill, os.getpid(), signal.SIGTERM)
        await shell.supervise(work(), stop=stop.set)

    asyncio.run(scenario())
    assert finished == ["cleaned up"]
