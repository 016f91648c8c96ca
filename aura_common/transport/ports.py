"""Binding a listening port, scanning forward when the configured one is taken."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from aura_common.errors import AuraError

log = logging.getLogger(__name__)

SCAN_ATTEMPTS = 20
TCP_BACKLOG = 512
_KIND: dict[int, str] = {socket.SOCK_DGRAM: "udp", socket.SOCK_STREAM: "tcp"}


def _candidates(port: int, attempts: int, skip: set[int] | frozenset[int]) -> list[int]:
    return [c for c in range(port, min(port + attempts, 65536)) if c not in skip]


def _open(host: str, port: int, sock_type: int) -> socket.socket:
    """One bound (and, for TCP, listening) socket; OSError when that fails."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, sock_type | socket.SOCK_CLOEXEC)
    try:
        if family == socket.AF_INET6 and host == "::":
            # One socket for both families: IPv4 peers appear as ::ffff:a.b.c.d.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if sock_type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if sock_type == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _ipv6_unavailable(exc: OSError) -> bool:
    return exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def bind_with_scan(
    host: str,
    port: int,
    sock_type: int,
    *,
    attempts: int = SCAN_ATTEMPTS,
    skip: set[int] | frozenset[int] = frozenset(),
) -> socket.socket:
    """Bind `host:port`, or the next free port of the `attempts` ports from `port` on.

    Ports in `skip` are passed over (QUIC skips the one the UDP transport took). `::` binds
    dual-stack, and falls back to 0.0.0.0 where the host has no IPv6. Raises AuraError naming
    the range when every port is busy.
    """
    kind = _KIND.get(sock_type, str(sock_type))
    last_error: OSError | None = None
    for candidate in _candidates(port, attempts, skip):
        try:
            try:
                sock = _open(host, candidate, sock_type)
            except OSError as exc:
                if host != "::" or not _ipv6_unavailable(exc):
                    raise
                log.warning("IPv6 is unavailable (%s); listening on IPv4 only", exc.strerror)
                host = "0.0.0.0"
                sock = _open(host, candidate, sock_type)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise AuraError(
                    f"cannot bind {kind} {host} port {candidate}: {exc.strerror}"
                ) from None
            last_error = exc
            continue
        if candidate != port:
            log.warning("%s port %d is busy; listening on port %d instead", kind, port, candidate)
        else:
            log.info("listening on %s port %d", kind, candidate)
        return sock
    last = min(port + attempts - 1, 65535)
    reason = f" ({last_error.strerror})" if last_error else ""
    raise AuraError(
        f"no free {kind} port on {host} from {port} to {last}{reason}; "
        "free one or change the port in the config"
    )
