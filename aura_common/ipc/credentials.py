"""Who is on the other end of a Unix socket (SO_PEERCRED), and the refusal of a caller."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from aura_common.errors import AuraError


class Credentials(NamedTuple):
    pid: int
    uid: int
    gid: int


class NotPermitted(AuraError):
    """The caller's credentials do not allow the role it asked for (the message says why)."""


# Decides the role of a caller from its credentials and the role its hello claims; raises
# NotPermitted to refuse it (aura_common.ipc.accounts).
Authorize = Callable[[Credentials, str], str]
# Whether a caller's uid may take any role at all on a listener, asked before its hello is read:
# None if not, else the name of the share of hello slots it waits in (aura_common.ipc.listener).
Admits = Callable[[Credentials], str | None]


def peer_credentials(sock: socket.socket) -> Credentials:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Credentials(*struct.unpack("3i", raw))
