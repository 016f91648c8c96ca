"""Connecting and listening: the `hello` exchange, and who may connect in which role.

The connecting side speaks first with a `hello` (protocol version and the role it claims).
Who may connect, and in which role, is decided on the listening side from SO_PEERCRED by the
listener's `admits` and `authorize` callbacks (aura_common.ipc.accounts): a caller whose uid may
take no role there is closed as it is accepted, before anything of it is read; the role in
the hello of the others only has to agree with what their uid allows. The listener answers
with its own hello, or with an `error` frame and closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable

from aura_common.errors import AuraError
from aura_common.ipc.channel import Channel, ChannelClosed
from aura_common.ipc.credentials import (
    Admits,
    Authorize,
    Credentials,
    NotPermitted,
    peer_credentials,
)
from aura_common.ipc.frames import PROTOCOL_VERSION, Error, Hello, Protocol, encode

log = logging.getLogger("aura_common.ipc")

HELLO_TIMEOUT = 5.0
# Connections that have not passed their hello yet; more are closed at once, so callers cannot
# use up the listener's descriptors. Each uid has its own few, and each share (`admits` names
# it: root and every service account have one of their own, the admin group's members one
# between them) a bounded number: callers that sit on their connections without a hello (a
# compromised transport, operators' stuck scripts, however many operators) delay only their
# own share, never another account (a transport reconnecting after a restart).
MAX_UNAUTHENTICATED = 64
MAX_UNAUTHENTICATED_PER_SHARE = 16
MAX_UNAUTHENTICATED_PER_UID = 4
# Callers turned away as they connect are logged at most this often (with their number), so
# a local user looping on connect() cannot flood the journal.
TURNED_AWAY_LOG_INTERVAL = 10.0
# Frames a turned-away caller sent before we accepted it, dropped unread (MSG_TRUNC).
TURNED_AWAY_DISCARDED = 4


class HelloRejected(ChannelClosed):
    """The other side refused the hello: wrong protocol version, or not permitted."""


async def _expect_hello(channel: Channel) -> Hello:
    try:
        # Not wait_for: on Python 3.11 it loses a cancellation (Listener.close) that comes as
        # the hello does, and the handler would outlive the listener.
        async with asyncio.timeout(HELLO_TIMEOUT):
            frame = await channel.recv()
    except TimeoutError:
        channel.close()
        raise HelloRejected(f"no hello within {HELLO_TIMEOUT:.0f} s") from None
    if isinstance(frame, Error):
        channel.close()
        raise HelloRejected(f"refused: {frame.message}")
    if not isinstance(frame, Hello):
        channel._abort("expected a hello frame first")
        raise HelloRejected(f"expected a hello frame, got {frame.TAG!r}")
    if frame.v != PROTOCOL_VERSION:
        channel._abort(f"protocol version {PROTOCOL_VERSION} required")
        raise HelloRejected(
            f"protocol version mismatch: ours {PROTOCOL_VERSION}, theirs {frame.v!r}"
        )
    channel.role = frame.role
    return frame


async def connect(path: str | os.PathLike[str], role: str, protocol: Protocol) -> Channel:
    """Connect to a listener as `role`, exchange hellos, and return the channel, which
    accepts the frames of `protocol`.

    Raises OSError when nothing listens at `path`, HelloRejected when the listener refuses.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, os.fspath(path))
        channel = Channel(sock, protocol)
    except BaseException:
        sock.close()
        raise
    try:
        await channel.send_reliable(Hello(PROTOCOL_VERSION, role))
        await _expect_hello(channel)
    except BaseException:
        channel.close()
        raise
    return channel


class Listener:
    """Accepts channels on a Unix socket path (or a socket systemd passed us); each accepts
    the frames of `protocol`."""

    def __init__(
        self,
        sock: socket.socket,
        path: str | None,
        on_channel: Callable[[Channel], Awaitable[None]],
        authorize: Authorize,
        admits: Admits,
        role: str,
        protocol: Protocol,
    ) -> None:
        self.sock = sock
        self.protocol = protocol
        self.path = path
        self.role = role
        self._on_channel = on_channel
        self._authorize = authorize
        self._admits = admits
        self._unauthenticated: collections.Counter[int] = collections.Counter()  # by uid
        self._unauthenticated_shares: collections.Counter[str] = collections.Counter()
        self.refused = 0
        self._turned_away = 0  # since the last line about them
        self._turned_away_logged = -TURNED_AWAY_LOG_INTERVAL
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop.add_reader(sock.fileno(), self._accept_ready)

    @classmethod
    async def start(
        cls,
        where: str | os.PathLike[str] | socket.socket,
        on_channel: Callable[[Channel], Awaitable[None]],
        authorize: Authorize,
        admits: Admits,
        *,
        protocol: Protocol,
        role: str = "router",
        group: int | None = None,
        mode: int = 0o660,
    ) -> Listener:
        """Listen at a path (`mode`, owned by `group` if given) or on a bound socket.

        A socket file left by a process that died is replaced; one a live process still
        listens on is not (AuraError).
        """
        if isinstance(where, socket.socket):
            sock, path = where, None
        else:
            path = os.fspath(where)
            sock = bind_path(path, group, mode)
        sock.setblocking(False)
        return cls(sock, path, on_channel, authorize, admits, role, protocol)

    def _accept_ready(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: log, and let the next readiness event retry.
                log.error("accept on %s failed: %s", self.path or "activated socket", exc)
                return
            try:
                caller = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            share = self._admits(caller)
            if share is None:
                self._turn_away(conn, caller, "permission denied: this account may not "
                                "connect here")
            elif self._unauthenticated[caller.uid] >= MAX_UNAUTHENTICATED_PER_UID:
                self._turn_away(conn, caller, f"uid {caller.uid} has "
                                f"{MAX_UNAUTHENTICATED_PER_UID} connections waiting for "
                                "their hello already")
            elif self._unauthenticated_shares[share] >= MAX_UNAUTHENTICATED_PER_SHARE:
                self._turn_away(conn, caller, f"{share} has {MAX_UNAUTHENTICATED_PER_SHARE} "
                                "connections waiting for their hello already")
            elif self._unauthenticated.total() >= MAX_UNAUTHENTICATED:
                self._turn_away(conn, caller, "too many connections waiting for their hello")
            else:
                self._unauthenticated[caller.uid] += 1
                self._unauthenticated_shares[share] += 1
                task = self._loop.create_task(self._serve(conn, caller.uid, share))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _turn_away(self, conn: socket.socket, caller: Credentials, why: str) -> None:
        """Close a connection as it is accepted, nothing of it read; say why if it listens."""
        self.refused += 1
        with contextlib.suppress(OSError):
            # Discard what it sent already (its hello) unread: closed with data in its queue,
            # the socket would answer with a reset instead of the error frame.
            for _ in range(TURNED_AWAY_DISCARDED):
                conn.recv(1, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        with contextlib.suppress(OSError):
            conn.send(encode(Error(why)), socket.MSG_DONTWAIT)
        conn.close()
        self._turned_away += 1
        now = time.monotonic()
        if now - self._turned_away_logged >= TURNED_AWAY_LOG_INTERVAL:
            log.warning("turned away %d connection(s) on %s, the last from pid %d (uid %d, "
                        "gid %d): %s", self._turned_away, self.path or self.role, caller.pid,
                        caller.uid, caller.gid, why)
            self._turned_away, self._turned_away_logged = 0, now

    async def _serve(self, conn: socket.socket, uid: int, share: str) -> None:
        try:
            channel = await self._authenticate(conn)
        finally:
            self._unauthenticated[uid] -= 1
            if not self._unauthenticated[uid]:
                del self._unauthenticated[uid]
            self._unauthenticated_shares[share] -= 1
            if not self._unauthenticated_shares[share]:
                del self._unauthenticated_shares[share]
        if channel is None:
            return
        try:
            await self._on_channel(channel)
        except ChannelClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%r: handler failed", channel)
        finally:
            channel.close()

    async def _authenticate(self, conn: socket.socket) -> Channel | None:
        """Read the hello, decide the caller's role from its credentials, and answer."""
        try:
            channel = Channel(conn, self.protocol)
        except OSError as exc:
            log.warning("dropping a connection that broke at once: %s", exc)
            conn.close()
            return None
        try:
            hello = await _expect_hello(channel)
            c = channel.peer_credentials
            try:
                channel.role = self._authorize(c, hello.role)
            except NotPermitted as refused:
                self.refused += 1
                log.warning(
                    "refused pid %d (uid %d, gid %d) as %s on %s: %s",
                    c.pid, c.uid, c.gid, hello.role, self.path or self.role, refused,
                )  # fmt: skip
                channel._abort(f"permission denied: {refused}")
                return None
            await channel.send_reliable(Hello(PROTOCOL_VERSION, self.role))
        except ChannelClosed as exc:
            log.warning("%r: bad hello: %s", channel, exc)
            channel.close()
            return None
        except BaseException:
            channel.close()
            raise
        return channel

    async def close(self) -> None:
        """Stop accepting, close every channel's handler, and remove our socket file."""
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def bind_path(path: str, group: int | None, mode: int) -> socket.socket:
    """A listening SEQPACKET socket at `path` with `mode`, its group `group` if given."""
    # /run is emptied at boot; without systemd's RuntimeDirectory= nobody else recreates it.
    # Others need to traverse the directory; the socket's own mode decides who connects.
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o755, exist_ok=True)
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        # The mode comes from the umask at bind(), and the group is set on the path without
        # following a link: the runtime directory may belong to a service account, which could
        # swap the socket for a symlink between our calls.
        umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(umask)
        if group is not None:
            os.chown(path, -1, group, follow_symlinks=False)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise AuraError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AuraError(f"{path} exists and is not a socket; remove it or change runtime_dir")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # backlog full: very much alive
            raise AuraError(f"another process is already listening on {path}") from None
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EPROTOTYPE):
            raise AuraError(f"{path}: cannot tell whether it is in use ({exc.strerror})") from None
    else:
        raise AuraError(f"another process is already listening on {path}")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
