"""The client daemon's event-loop handler for errors nobody awaited (a carrier library's stray
callback): one WARNING line, the traceback only at DEBUG, and the loop keeps running."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.client.process import log_stray_exception


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
