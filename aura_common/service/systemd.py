"""The systemd service protocols, spoken natively (no libsystemd).

* sd_notify: `READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1` as one datagram to
  `$NOTIFY_SOCKET` (a path, or an abstract name written with a leading `@`).
* Socket activation: the sockets systemd passes from fd 3 on (`LISTEN_FDS`), named by
  `LISTEN_FDNAMES` (the units set `FileDescriptorName=`).

Without systemd every function here is a harmless no-op, so services run unchanged in a
terminal or under `aura server run`.
"""

from __future__ import annotations

import fcntl
import os
import socket

LISTEN_FDS_START = 3


def _notify_address() -> str | None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


# Not the sdnotify package: it sends Latin-1, not UTF-8, and hides every failure in a bare except.
def notify(*states: str) -> bool:
    """Send `KEY=value` states to the service manager; False when there is none to tell."""
    address = _notify_address()
    if address is None:
        return False
    message = "\n".join(states).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message, address)
        except OSError:
            return False  # the manager went away; nothing useful to do about it
    return True


def ready(status: str | None = None) -> bool:
    states = ["READY=1", f"MAINPID={os.getpid()}"]
    if status is not None:
        states.append(f"STATUS={status}")
    return notify(*states)


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def stopping() -> bool:
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds within which systemd expects `watchdog_ping`, or None when no watchdog is set."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


def listen_fds() -> dict[str, list[socket.socket]]:
    """Sockets passed by systemd, grouped by name; an unnamed socket is named "unknown".

    The environment variables are removed afterwards, so child processes do not take the
    sockets for theirs and a second call returns nothing.
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    names_text = os.environ.get("LISTEN_FDNAMES")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    names = names_text.split(":") if names_text else []
    result: dict[str, list[socket.socket]] = {}
    for index in range(int(count)):
        fd = LISTEN_FDS_START + index
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        name = names[index] if index < len(names) and names[index] else "unknown"
        result.setdefault(name, []).append(socket.socket(fileno=fd))
    return result
