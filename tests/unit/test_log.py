"""Journal native protocol, stderr lines, structured fields and rate limiting."""

from __future__ import annotations

import array
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aura_common.service import log as aura_log
from aura_common.service.log import (
    NOTICE,
    JournalHandler,
    RateLimitedLog,
    StderrHandler,
    encode_journal_entry,
    fields,
)


def parse_journal_entry(data: bytes) -> dict[str, str]:
    """The reader side of the native protocol, as journald implements it."""
    entry, position = {}, 0
    while position < len(data):
        end = data.index(b"\n", position)
        line = data[position:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            position = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n"
            position = end + 10 + size
        entry[key.decode()] = value.decode()
    return entry


@given(st.lists(st.tuples(st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True), st.text()),
                max_size=6))  # fmt: skip
def test_journal_encoding_round_trips(items: list[tuple[str, str]]) -> None:
    expected = {k: v.encode("utf-8", "replace").decode() for k, v in items}
    assert parse_journal_entry(encode_journal_entry(items)) == expected


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, logging.Logger, JournalHandler]]:
    path = str(tmp_path / "journal.socket")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(5)
    handler = JournalHandler("aura-test", address=path)
    logger = logging.getLogger(f"aura.test.{tmp_path.name}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield receiver, logger, handler
    logger.removeHandler(handler)
    handler.close()
    receiver.close()


def test_journal_entry_has_priority_identifier_code_and_fields(journal) -> None:
    receiver, logger, _ = journal
    logger.warning("handshake from %s", "alice",
                   extra=fields(peer="alice", transport="udp", endpoint="192.0.2.7:5000",
                                absent=None))  # fmt: skip
    entry = parse_journal_entry(receiver.recv(65536))
    assert entry["MESSAGE"] == "handshake from alice"
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "aura-test"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_journal_entry_has_priority_identifier_code_and_fields"
    assert int(entry["CODE_LINE"]) > 0
    assert entry["AURA_PEER"] == "alice"
    assert entry["AURA_TRANSPORT"] == "udp"
    assert entry["AURA_ENDPOINT"] == "192.0.2.7:5000"
    assert "AURA_ABSENT" not in entry
    for level, priority in ((logging.DEBUG, "7"), (logging.INFO, "6"), (NOTICE, "5"),
                            (logging.ERROR, "3"), (logging.CRITICAL, "2")):  # fmt: skip
        logger.log(level, "x")
        assert parse_journal_entry(receiver.recv(65536))["PRIORITY"] == priority


def test_multiline_messages_and_tracebacks(journal) -> None:
    receiver, logger, _ = journal
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    entry = parse_journal_entry(receiver.recv(65536))
    assert entry["MESSAGE"].startswith("it failed\nTraceback")
    assert "ValueError: boom" in entry["MESSAGE"]
    assert entry["PRIORITY"] == "3"


def test_oversized_entry_goes_as_a_sealed_memfd(journal) -> None:
    receiver, logger, handler = journal
    handler.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    logger.info("big %s", "x" * 100_000)
    data, ancillary, _, _ = receiver.recvmsg(65536, socket.CMSG_SPACE(4))
    assert data == b""
    fds = array.array("i")
    for level, kind, payload in ancillary:
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds.frombytes(payload)
    os.lseek(fds[0], 0, os.SEEK_SET)  # the sender's writes left the shared offset at the end
    with os.fdopen(fds[0], "rb") as memfd:
        entry = parse_journal_entry(memfd.read())
    assert entry["MESSAGE"] == "big " + "x" * 100_000


def test_journal_gone_falls_back_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = JournalHandler("aura-test", address=str(tmp_path / "missing"))
    logger = logging.getLogger("aura.test.gone")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.error("still visible", extra=fields(peer="bob"))
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert capsys.readouterr().err == "aura-test ERROR still visible peer=bob\n"


def test_stderr_lines(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("aura.test.stderr")
    logger.propagate = False
    handler = StderrHandler("aura-udp")
    logger.addHandler(handler)
    try:
        logger.warning("garbage datagram", extra=fields(endpoint="[2001:db8::1]:9", peer=None))
    finally:
        logger.removeHandler(handler)
    assert capsys.readouterr().err == "aura-udp WARNING garbage datagram endpoint=[2001:db8::1]:9\n"


def test_journal_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = open(tmp_path / "stderr", "w")  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        assert not aura_log.journal_available()
        st_ = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino + 1}")  # someone else's
        assert not aura_log.journal_available()
        monkeypatch.setenv("JOURNAL_STREAM", f"{st_.st_dev}:{st_.st_ino}")
        assert aura_log.journal_available()
        root = logging.getLogger()
        saved = list(root.handlers), root.level
        try:
            handler = aura_log.setup("aura-router", verbose=True)
            assert isinstance(handler, JournalHandler)
            assert root.handlers == [handler] and root.level == logging.DEBUG
            monkeypatch.delenv("JOURNAL_STREAM")
            assert isinstance(aura_log.setup("aura-router"), StderrHandler)
            assert root.level == logging.INFO
        finally:
            for h in list(root.handlers):
                root.removeHandler(h)
                h.close()
            for h in saved[0]:
                root.addHandler(h)
            root.setLevel(saved[1])
    finally:
        stream.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def collected() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger("aura.test.ratelimit")
    logger.propagate = False
    handler = Collect()
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


def test_rate_limit_per_key_with_summary(collected: tuple[logging.Logger, Collect]) -> None:
    logger, out = collected
    clock = Clock()
    limited = RateLimitedLog(logger, interval=10, burst=2, clock=clock)
    for _ in range(5):
        limited.log("1.2.3.4", logging.WARNING, "garbage from %s", "1.2.3.4")
    limited.log("5.6.7.8", logging.WARNING, "garbage from %s", "5.6.7.8")
    assert out.lines == ["garbage from 1.2.3.4"] * 2 + ["garbage from 5.6.7.8"]
    clock.now = 10.5
    limited.log("1.2.3.4", logging.WARNING, "garbage from %s", "1.2.3.4")
    assert out.lines[3:] == [
        "suppressed 3 similar messages for 1.2.3.4 in 10 s", "garbage from 1.2.3.4",
    ]  # fmt: skip
    limited.log("1.2.3.4", logging.WARNING, "again")
    limited.log("1.2.3.4", logging.WARNING, "again")
    clock.now = 21
    limited.flush()
    assert out.lines[5:] == ["again", "suppressed 1 similar messages for 1.2.3.4 in 10 s"]


def test_rate_limit_key_table_is_bounded(collected: tuple[logging.Logger, Collect]) -> None:
    logger, out = collected
    limited = RateLimitedLog(logger, interval=10, burst=1, max_keys=3, clock=Clock())
    for i in range(1000):
        limited.log(f"10.0.{i // 256}.{i % 256}", logging.WARNING, "garbage")
    assert len(limited._windows) <= 3 + 1  # plus the shared overflow key
    # Three keys of their own, then one shared line for everyone else.
    assert len(out.lines) == 4
