"""The client daemon's event-loop handler for errors nobody awaited (a carrier library's stray
callback): one WARNING line, the traceback only at DEBUG, and the loop keeps running."""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_interface

import pytest

from aura_common.config import ClientConfig
from aura_common.config.client import ClientInterface, ClientServer
from services.client.process import log_stray_exception, state_in_state_directory


def _fail() -> None:
    raise AttributeError("'NoneType' object has no attribute 'send'")


async def _stray_error_then_more_work() -> str:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(log_stray_exception)
    loop.call_soon(_fail)
    await asyncio.sleep(0.01)
    return "still running"


def test_a_stray_callback_error_is_one_warning_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aura-client"):
        assert asyncio.run(_stray_error_then_more_work()) == "still running"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert line.startswith("ignored: Exception in callback")
    assert "'NoneType' object has no attribute 'send' (AttributeError)" in line
    assert warnings[0].exc_info is None and "\n" not in line
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].levelno == logging.DEBUG
    assert tracebacks[0].exc_info is not None and tracebacks[0].exc_info[0] is AttributeError


def test_a_context_without_an_exception_is_logged_as_its_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG, logger="aura-client"):
            log_stray_exception(loop, {"message": "Task was destroyed but it is pending!"})
    finally:
        loop.close()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "ignored: Task was destroyed but it is pending!")]


def _config(path: str, state_file: str | None = None) -> ClientConfig:
    return ClientConfig(
        name="alice", path=path, state_file=state_file,
        interface=ClientInterface(bytes(32), (ip_interface("10.77.0.2/32"),)),
        server=ClientServer(bytes(32), "192.0.2.1", bytes(32)),
    )


def test_under_the_unit_the_state_goes_to_its_state_directory() -> None:
    # aura-client@.service: the config's folder is read-only, STATE_DIRECTORY is writable.
    config = state_in_state_directory(_config("/etc/aura/clients/alice.yaml"),
                                      {"STATE_DIRECTORY": "/var/lib/aura-client"})
    assert config.manifest_state_file == "/var/lib/aura-client/alice.state.json"
    assert config.dns_state_file == "/var/lib/aura-client/alice.state.dns.json"


def test_by_hand_the_state_stays_beside_the_config_and_a_named_state_file_wins() -> None:
    by_hand = state_in_state_directory(_config("/home/me/alice.yaml"), {})
    assert by_hand.manifest_state_file == "/home/me/alice.state.json"
    named = _config("/etc/aura/clients/alice.yaml", "/srv/alice.json")
    assert state_in_state_directory(named, {"STATE_DIRECTORY": "/var/lib/aura-client"}) == named
    assert named.manifest_state_file == "/srv/alice.json"
