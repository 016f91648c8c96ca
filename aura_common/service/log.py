"""Logging for every Aura process: the journal with structured fields, or plain stderr lines.

Under systemd, records go to journald over its native protocol (implemented here), with the
priority from the level and Aura's fields as `AURA_*` journal fields:

    log.info("handshake completed", extra=fields(peer="alice", transport="udp"))

so `journalctl AURA_PEER=alice` and `journalctl -u aura-udp -p warning` work. Elsewhere each
record is one stderr line: `aura-udp INFO handshake completed peer=alice transport=udp`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JOURNAL_SOCKET = "/run/systemd/journal/socket"
FIELDS_ATTRIBUTE = "aura_fields"
_FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,58}")
# syslog's "normal but significant": between warning and info (journal priority 5).
NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")
_PRIORITIES = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    NOTICE: 5,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def fields(**values: object) -> dict[str, Any]:
    """Structured fields for `extra=`: `fields(peer="alice")` becomes `AURA_PEER=alice`."""
    present = {key.upper(): str(value) for key, value in values.items() if value is not None}
    return {FIELDS_ATTRIBUTE: present}


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    return getattr(record, FIELDS_ATTRIBUTE, None) or {}


def _priority(level: int) -> int:
    for threshold, priority in _PRIORITIES.items():
        if level >= threshold:
            return priority
    return 7


def _message_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    return text


def encode_journal_entry(items: list[tuple[str, str]]) -> bytes:
    """The journal's native datagram: `KEY=value\\n`, or a length-prefixed value when it
    contains a newline (`KEY\\n`, 64-bit little-endian length, value, `\\n`)."""
    out = bytearray()
    for key, value in items:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalHandler(logging.Handler):
    def __init__(self, identifier: str, address: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def entry(self, record: logging.LogRecord) -> list[tuple[str, str]]:
        items = [
            ("MESSAGE", _message_text(record)),
            ("PRIORITY", str(_priority(record.levelno))),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", str(record.lineno)),
            ("CODE_FUNC", record.funcName),
            ("AURA_LOGGER", record.name),
        ]
        for key, value in record_fields(record).items():
            if _FIELD_NAME.fullmatch(key):
                items.append((f"AURA_{key}", value))
        return items

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = encode_journal_entry(self.entry(record))
            try:
                self.sock.sendto(data, self.address)
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:  # too big for one datagram
                    raise
                self._send_as_memfd(data)
        except Exception:
            # The journal is gone or refused: keep the line rather than lose it.
            sys.stderr.write(_stderr_line(self.identifier, record) + "\n")

    def _send_as_memfd(self, data: bytes) -> None:
        """journald takes an oversized entry as a sealed memfd passed with SCM_RIGHTS."""
        fd = os.memfd_create("journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]
            self.sock.sendmsg([], rights, 0, self.address)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()
        super().close()


def _stderr_line(service: str, record: logging.LogRecord) -> str:
    extra = "".join(f" {k.lower()}={v}" for k, v in record_fields(record).items())
    return f"{service} {record.levelname} {_message_text(record)}{extra}"


class StderrHandler(logging.Handler):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(_stderr_line(self.service, record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def journal_available() -> bool:
    """True when stderr is the journal, or we run under systemd and journald listens."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if stream:
        try:
            st = os.fstat(sys.stderr.fileno())
            if stream == f"{st.st_dev}:{st.st_ino}":
                return True
        except (OSError, ValueError, AttributeError):
            pass
    return bool(os.environ.get("INVOCATION_ID")) and os.path.exists(JOURNAL_SOCKET)


def setup(service: str, verbose: bool = False) -> logging.Handler:
    """Send every logger's records to the journal or stderr; returns the handler in use."""
    handler: logging.Handler = (
        JournalHandler(service) if journal_available() else StderrHandler(service)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


@dataclass(slots=True)
class _Window:
    started: float
    emitted: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """At most `burst` records per `interval` seconds per key; the rest are counted and
    reported in one summary line when the key's next interval begins (or on `flush`).

    Keys are things like a source address, so the table is bounded: when `max_keys` is
    reached, further keys share one overflow key.
    """

    OVERFLOW_KEY = "(other sources)"

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        burst: int = 5,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval, self.burst = logger, interval, burst
        self.max_keys, self.clock = max_keys, clock
        self._windows: dict[str, _Window] = {}
        self._levels: dict[str, int] = {}

    def log(
        self, key: str, level: int, message: str, *args: object, extra: dict[str, Any] | None = None
    ) -> None:
        now = self.clock()
        if key not in self._windows and len(self._windows) >= self.max_keys:
            self.flush()
            if len(self._windows) >= self.max_keys:
                key = self.OVERFLOW_KEY
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.interval:
            self._summarize(key, window)
            window = None
        if window is None:
            window = self._windows[key] = _Window(now)
        self._levels[key] = level
        if window.emitted < self.burst:
            window.emitted += 1
            self.logger.log(level, message, *args, extra=extra)
        else:
            window.suppressed += 1

    def _summarize(self, key: str, window: _Window) -> None:
        if window.suppressed:
            self.logger.log(
                self._levels.get(key, logging.INFO),
                "suppressed %d similar messages for %s in %.0f s",
                window.suppressed, key, self.interval,
            )  # fmt: skip

    def flush(self) -> None:
        """Report and forget every window whose interval has ended."""
        now = self.clock()
        for key, window in list(self._windows.items()):
            if now - window.started >= self.interval:
                self._summarize(key, window)
                del self._windows[key]
                self._levels.pop(key, None)
