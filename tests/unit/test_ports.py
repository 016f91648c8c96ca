"""Port binding with a forward scan when the configured port is busy."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from aura_common.errors import AuraError
from aura_common.transport.ports import bind_with_scan

KINDS = [socket.SOCK_DGRAM, socket.SOCK_STREAM]


def _occupy(port: int, sock_type: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, sock_type)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    if sock_type == socket.SOCK_STREAM:
        sock.listen()
    return sock


def free_range(count: int, sock_type: int) -> int:
    """A base port with `count` free ports after it (checked by binding them all)."""
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, sock_type)
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                held.append(_occupy(port, sock_type))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


@pytest.mark.parametrize("sock_type", KINDS, ids=["udp", "tcp"])
def test_binds_dual_stack_on_the_configured_port(
    sock_type: int, opened: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_range(1, sock_type)
    with caplog.at_level(logging.INFO, logger="aura_common.transport.ports"):
        sock = bind_with_scan("::", port, sock_type)
    opened.append(sock)
    assert sock.family == socket.AF_INET6
    assert sock.getsockname()[1] == port
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert f"port {port}" in caplog.text
    # IPv4 clients reach the dual-stack socket.
    client = socket.socket(socket.AF_INET, sock_type)
    opened.append(client)
    client.settimeout(5)
    if sock_type == socket.SOCK_DGRAM:
        client.sendto(b"ping", ("127.0.0.1", port))
        data, source = sock.recvfrom(100)
        assert data == b"ping" and source[0] == "::ffff:127.0.0.1"
    else:
        client.connect(("127.0.0.1", port))
        conn, _ = sock.accept()
        opened.append(conn)


@pytest.mark.parametrize("sock_type", KINDS, ids=["udp", "tcp"])
def test_scans_past_busy_and_skipped_ports(
    sock_type: int, opened: list[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    base = free_range(4, sock_type)
    opened.append(_occupy(base, sock_type))
    with caplog.at_level(logging.WARNING, logger="aura_common.transport.ports"):
        sock = bind_with_scan("::", base, sock_type, skip={base + 1})
    opened.append(sock)
    assert sock.getsockname()[1] == base + 2
    assert f"port {base} is busy; listening on port {base + 2}" in caplog.text


def test_specific_ipv4_address(opened: list[socket.socket]) -> None:
    port = free_range(1, socket.SOCK_DGRAM)
    sock = bind_with_scan("127.0.0.1", port, socket.SOCK_DGRAM)
    opened.append(sock)
    assert sock.family == socket.AF_INET
    assert sock.getsockname() == ("127.0.0.1", port)


@pytest.mark.parametrize("sock_type", KINDS, ids=["udp", "tcp"])
def test_all_busy_names_the_range(sock_type: int, opened: list[socket.socket]) -> None:
    base = free_range(3, sock_type)
    opened.extend(_occupy(p, sock_type) for p in (base, base + 2))
    with pytest.raises(AuraError) as info:
        bind_with_scan("::", base, sock_type, attempts=3, skip={base + 1})
    kind = "udp" if sock_type == socket.SOCK_DGRAM else "tcp"
    assert f"no free {kind} port on :: from {base} to {base + 2}" in str(info.value)


def test_scan_stops_at_the_last_port() -> None:
    with pytest.raises(AuraError, match="from 65535 to 65535"):
        held = _occupy(65535, socket.SOCK_DGRAM)
        try:
            bind_with_scan("::", 65535, socket.SOCK_DGRAM)
        finally:
            held.close()


def test_unusable_address_is_a_clear_error() -> None:
    # 192.0.2.1 (TEST-NET-1) is not assigned here: no scanning helps, so fail at once.
    with pytest.raises(AuraError, match=r"cannot bind udp 192\.0\.2\.1 port"):
        bind_with_scan("192.0.2.1", 8443, socket.SOCK_DGRAM)
