"""Talking to the running router over its admin socket."""

from __future__ import annotations

import dataclasses
from typing import Any

from aura_common import ipc
from aura_common.config import ServerConfig
from aura_common.ipc.frames import (
    FROM_ROUTER,
    Frame,
    ManifestPushed,
    ManifestUpdated,
    Reload,
    Reloaded,
    RouterStatus,
    Status,
)
from aura_common.ipc.oneshot import Reply

RouterNotRunning = ipc.NotRunning


def request(config: ServerConfig, frame: Frame, reply: type[Reply]) -> Reply:
    """Send one admin request and return the reply; RouterNotRunning if nobody listens."""
    return ipc.request(
        config.router_socket, frame, reply, FROM_ROUTER, service="the router",
        start="start it with `systemctl start aura-router` or `aura server run`",
        allowed=f"run as root or a member of the '{config.admin_group}' group",
    )


def router_status(config: ServerConfig) -> dict[str, Any]:
    """The router's status report, as `aura status --json` prints it."""
    report = dataclasses.asdict(request(config, Status(), RouterStatus))
    if report["registry"] is None:  # no cluster
        del report["registry"]
    return report


def tell_router(config: ServerConfig, frame: Reload | ManifestUpdated) -> bool:
    """Ask a running router to act now; False (not an error) when it is not running."""
    try:
        request(config, frame, Reloaded if isinstance(frame, Reload) else ManifestPushed)
    except RouterNotRunning:
        return False
    return True
