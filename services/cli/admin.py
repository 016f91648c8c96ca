"""Talking to the running router over its admin socket."""

from __future__ import annotations

import asyncio
from typing import Any

from aura_common import ipc
from aura_common.config import ServerConfig
from aura_common.errors import AuraError

TIMEOUT = 10.0


class RouterNotRunning(AuraError):
    pass


def request(config: ServerConfig, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one admin request and return the reply; RouterNotRunning if nobody listens."""

    async def exchange() -> dict[str, Any]:
        try:
            channel = await ipc.connect(config.router_socket, "admin")
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise RouterNotRunning(
                f"the router is not running (no answer on {config.router_socket}): "
                "start it with `systemctl start aura-router` or `aura server run`"
            ) from error
        channel.shapes = ipc.ROUTER_FRAMES
        try:
            await channel.send_reliable(frame)
            reply = await channel.recv()
        finally:
            channel.close()
        if reply.get("t") == "error":
            raise AuraError(f"the router refused {frame['t']}: {reply.get('message')}")
        return reply

    try:
        return asyncio.run(asyncio.wait_for(exchange(), TIMEOUT))
    except TimeoutError:
        raise AuraError(f"the router did not answer within {TIMEOUT:.0f}s") from None
    except PermissionError:
        raise AuraError(
            f"not allowed on {config.router_socket}: run as root or a member of the "
            f"'{config.admin_group}' group"
        ) from None


def tell_router(config: ServerConfig, kind: str) -> bool:
    """Ask a running router to act now; False (not an error) when it is not running."""
    try:
        request(config, {"t": kind})
    except RouterNotRunning:
        return False
    return True
