"""UDP datagrams in batches: GSO (UDP_SEGMENT) sends and GRO (UDP_GRO) receives.

One `sendmsg` with a UDP_SEGMENT control message sends up to 64 equal-sized datagrams (the last
may be shorter); with UDP_GRO enabled, one `recvmsg` may return many datagrams of one source
back to back, with their size in a control message. Python pays per call, so this is what lets
a transport move hundreds of megabits. Works for IPv4 and IPv6 sockets, blocking or not (every
call here is non-blocking).
"""

from __future__ import annotations

import errno
import socket
import struct
import weakref
from collections.abc import Sequence

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS per send
# One send's UDP payload stays within an IP packet of 65535 bytes with room for the headers
# (IPv6: 40, IPv4: 20 plus up to 40 of options) and the 8-byte UDP header.
MAX_SEND_BYTES = 0xFFFF - 40 - 8 - 20
_RECV_SIZE = 0x10000
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)

# Errors with which a kernel or route refuses segmentation offload for a socket.
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT})

_sockets_without_gso: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams; False if it does not support that."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def recv_batch(
    sock: socket.socket, limit: int = 64
) -> list[tuple[list[bytes], tuple[str, int]]]:
    """Datagrams waiting on `sock`, grouped by source, from at most `limit` receive calls.

    Consecutive datagrams from the same source share one entry. Never blocks.
    """
    buffer = bytearray(_RECV_SIZE)
    view = memoryview(buffer)
    batches: list[tuple[list[bytes], tuple[str, int]]] = []
    for _ in range(limit):
        try:
            size, ancillary, flags, address = sock.recvmsg_into(
                [buffer], _GRO_CMSG_SPACE, socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            break
        except ConnectionError:  # an ICMP error queued for a connected socket
            continue
        if flags & socket.MSG_TRUNC:
            continue
        segment_size = size
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                segment_size = struct.unpack("i", data[:4])[0] or size
        received = view[:size]
        if segment_size >= size:
            datagrams = [bytes(received)]
        else:
            datagrams = [
                bytes(received[start:start + segment_size])
                for start in range(0, size, segment_size)
            ]
        source = (address[0], address[1])
        if batches and batches[-1][1] == source:
            batches[-1][0].extend(datagrams)
        else:
            batches.append((datagrams, source))
    return batches


def send_batch(
    sock: socket.socket, datagrams: Sequence[bytes], destination: tuple[str, int]
) -> int:
    """Send `datagrams` to `destination`; returns how many the kernel accepted.

    Runs of equal-sized datagrams go out in one UDP_SEGMENT send. If the kernel refuses GSO
    for this socket, it sends one datagram per call from then on. A full buffer (EAGAIN,
    ENOBUFS) or an unreachable destination drops the datagrams concerned, as a full NIC queue
    would; the caller counts `len(datagrams) - returned` as dropped.
    """
    sent = 0
    use_gso = sock not in _sockets_without_gso
    index, count = 0, len(datagrams)
    while index < count:
        group_end = _group_end(datagrams, index) if use_gso else index + 1
        if group_end - index == 1:
            sent += _send_one(sock, datagrams[index], destination)
        else:
            group = datagrams[index:group_end]
            size = len(group[0])
            try:
                sock.sendmsg(
                    group, [(SOL_UDP, UDP_SEGMENT, struct.pack("H", size))],
                    socket.MSG_DONTWAIT, destination,
                )
                sent += len(group)
            except OSError as error:
                if error.errno in _GSO_REFUSED:
                    _sockets_without_gso.add(sock)
                    use_gso = False
                    sent += sum(_send_one(sock, datagram, destination) for datagram in group)
        index = group_end
    return sent


def _group_end(datagrams: Sequence[bytes], start: int) -> int:
    """End of the run from `start` that one GSO send can carry."""
    size = len(datagrams[start])
    if size == 0:  # a segment size of 0 would mean "no segmentation"
        return start + 1
    limit = min(len(datagrams), start + MAX_SEGMENTS, start + MAX_SEND_BYTES // size)
    end = start + 1
    while end < limit:
        length = len(datagrams[end])
        if length > size or length == 0:  # an empty last segment would vanish
            break
        end += 1
        if length < size:
            break
    return end


def _send_one(sock: socket.socket, datagram: bytes, destination: tuple[str, int]) -> int:
    try:
        sock.sendto(datagram, socket.MSG_DONTWAIT, destination)
    except OSError:
        return 0
    return 1
