"""The client's control socket: `status` and `down`, for `aura client status` and `down`.

Only the client's own account may connect (`accounts.own_account_only`); each request is one
frame answered by one frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aura_common import ipc
from aura_common.ipc.frames import ClientState, ClientStatus, Down, DownDone, Error, Status

log = logging.getLogger("aura-client")


class ControlSocket:
    def __init__(self, status: Callable[[], ClientState], stop: Callable[[], None]) -> None:
        self.status = status
        self.stop = stop

    async def serve(self, channel: ipc.Channel) -> None:
        while True:
            frame = await channel.recv()
            if isinstance(frame, Status):
                await channel.send_reliable(ClientStatus(self.status()))
            elif isinstance(frame, Down):
                log.info("stopping: down requested over the control socket")
                await channel.send_reliable(DownDone())
                self.stop()
            else:
                await channel.send_reliable(Error(f"unknown request {frame.TAG!r}"))
