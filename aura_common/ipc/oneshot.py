"""One request, one reply: how the command line talks to a running service."""

from __future__ import annotations

import asyncio
import os
from typing import TypeVar

from aura_common.errors import AuraError
from aura_common.ipc.channel import ChannelClosed
from aura_common.ipc.frames import Error, Frame, Protocol
from aura_common.ipc.listener import HelloRejected, connect

TIMEOUT = 10.0
Reply = TypeVar("Reply", bound=Frame)


class NotRunning(AuraError):
    """Nothing listens on the service's socket."""


def request(path: str | os.PathLike[str], frame: Frame, reply: type[Reply], protocol: Protocol, *,
            service: str, start: str, allowed: str, timeout: float = TIMEOUT) -> Reply:
    """Send `frame` to the service listening on `path` as `admin` and return its reply.

    Every failure is an AuraError of one line naming `service` (e.g. "the router") and what
    to do: NotRunning, saying how to `start` it, when nothing listens; who is `allowed` when
    the socket or the service refuses us; the service's own message when it answers with an
    `error` frame.
    """

    async def exchange() -> Frame:
        channel = await connect(path, "admin", protocol)
        try:
            await channel.send_reliable(frame)
            return await channel.recv()
        finally:
            channel.close()

    where = os.fspath(path)
    try:
        answer = asyncio.run(asyncio.wait_for(exchange(), timeout))
    except (FileNotFoundError, ConnectionRefusedError):
        raise NotRunning(f"{service} is not running (no answer on {where}): {start}") from None
    except PermissionError:
        raise AuraError(f"not allowed on {where}: {allowed}") from None
    except HelloRejected as error:
        raise AuraError(f"{service} refused the connection: {error} ({allowed})") from None
    except ChannelClosed as error:
        raise AuraError(f"{service} closed the connection: {error}") from None
    except TimeoutError:
        raise AuraError(f"{service} did not answer within {timeout:.0f}s") from None
    if isinstance(answer, Error):
        raise AuraError(f"{service} refused {frame.TAG}: {answer.message}")
    if not isinstance(answer, reply):
        raise AuraError(f"{service} answered {frame.TAG} with {answer.TAG}")
    return answer
