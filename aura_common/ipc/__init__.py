"""IPC between Aura processes: msgpack frames over SOCK_SEQPACKET Unix sockets.

`frames` is the protocol (every frame a frozen dataclass, encode and decode), `channel` one
connected socket (queues bounded in bytes, packet batches, CoDel), `listener` the hello and
who may connect (SO_PEERCRED, `credentials`), `oneshot` one request and its reply for the
command line.
"""

from aura_common.ipc import frames
from aura_common.ipc.channel import Channel, ChannelClosed, FrameTooLarge
from aura_common.ipc.credentials import (
    Admits,
    Authorize,
    Credentials,
    NotPermitted,
    peer_credentials,
)
from aura_common.ipc.listener import HelloRejected, Listener, bind_path, connect
from aura_common.ipc.oneshot import NotRunning, request

__all__ = [
    "Admits", "Authorize", "Channel", "ChannelClosed", "Credentials", "FrameTooLarge",
    "HelloRejected", "Listener", "NotPermitted", "NotRunning", "bind_path", "connect", "frames",
    "peer_credentials", "request",
]
