"""UDP datagrams in batches: GSO (UDP_SEGMENT) sends and GRO (UDP_GRO) receives.

One `sendmsg` with a UDP_SEGMENT control message sends up to 64 equal-sized datagrams (the last
may be shorter); with UDP_GRO enabled, one `recvmsg` may return many datagrams of one source
back to back, with their size in a control message. Python pays per call, so this is what lets
a transport move hundreds of megabits. Works for IPv4 and IPv6 sockets, blocking or not (every
call here is non-blocking).

A server bound to a wildcard address must answer from the address each client wrote to, not
from whichever address the kernel's route lookup picks: a client's connected socket, a NAT or a
firewall drops replies from any other address. `enable_pktinfo` makes the receive side report
that local address, and `send_batch(..., source=...)` sends from it.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from aura_common.netio.codel import CoDel

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
IP_PKTINFO = 8  # Linux <linux/in.h>; Python does not name it
# Linux socket options Python does not name (asm-generic/socket.h): root may exceed the
# net.core.[rw]mem_max caps.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# Socket buffers for a tunnel carrier. The default (about 200 KiB) holds a few milliseconds
# at tunnel speeds: a receiver that is briefly busy with a batch loses whole GRO trains,
# and TCP inside the tunnel backs off and retransmits work already done.
TUNNEL_SOCKET_BUFFER = 7 << 20

MAX_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS per send
# One send's UDP payload stays within an IP packet of 65535 bytes with room for the headers
# (IPv6: 40, IPv4: 20 plus up to 40 of options) and the 8-byte UDP header.
MAX_SEND_BYTES = 0xFFFF - 40 - 8 - 20
_RECV_SIZE = 0x10000
# As a plain int: `int & IntFlag` goes through the enum machinery, a microsecond per datagram.
_MSG_TRUNC = int(socket.MSG_TRUNC)
# Linux <asm-generic/socket.h>: the kernel's receive time of each datagram, a timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("=qq")
# Room for UDP_GRO's int, the larger of in_pktinfo (12 bytes) and in6_pktinfo (20 bytes), and
# the receive timestamp.
_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(20) + socket.CMSG_SPACE(_TIMESPEC.size)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, local (spec_dst), header destination
_IN6_PKTINFO = struct.Struct("=16si")  # address, ifindex

# Errors with which a kernel or route refuses segmentation offload for a socket.
_GSO_REFUSED = frozenset({errno.EIO, errno.EINVAL, errno.ENOPROTOOPT})
# Errors for a source address the host no longer has (IPv4 reports it as unreachable).
_SOURCE_REFUSED = frozenset({errno.EINVAL, errno.EADDRNOTAVAIL, errno.ENETUNREACH})

Endpoint = tuple[str, int]

_sockets_without_gso: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class _ReceiveBuffer(threading.local):
    """One receive buffer per thread, reused by every read: a fresh 64 KiB costs more than
    reading a small datagram (what an idle ping is). Reads copy out what they keep."""

    def __init__(self) -> None:
        self.buffer = bytearray(_RECV_SIZE)
        self.view = memoryview(self.buffer)


_receive = _ReceiveBuffer()


def enlarge_buffers(sock: socket.socket, size: int = TUNNEL_SOCKET_BUFFER) -> None:
    """Give `sock` send and receive buffers of `size` bytes (capped by the kernel's limits
    when not privileged)."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams; False if it does not support that."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def enable_pktinfo(sock: socket.socket) -> None:
    """Report each datagram's local destination address (see `recv_batch_with_local`).

    On a dual-stack IPv6 socket this covers IPv4 datagrams too, as IPv4-mapped addresses.
    """
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


def enable_timestamps(sock: socket.socket) -> None:
    """Report each datagram's receive time, so that `recv_batch*(..., aqm=...)` sees how long
    it waited in the socket's queue."""
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)


def recv_batch(sock: socket.socket, limit: int = 64, aqm: CoDel | None = None
               ) -> list[tuple[list[bytes], Endpoint]]:
    """Datagrams waiting on `sock`, grouped by source, from at most `limit` receive calls.

    All the datagrams one source sent share one entry, in the order they came, even when
    other sources' datagrams came between them: a tunnel's packets stay one batch (one
    decryption run, one IPC frame) while a flood from elsewhere interleaves. Never blocks.
    With `aqm` (and `enable_timestamps`), it decides by the time each datagram waited which
    to drop.
    """
    batches: dict[Endpoint, list[bytes]] = {}
    for datagrams, source, _local in recv_batch_with_local(sock, limit, aqm=aqm):
        if source in batches:
            batches[source].extend(datagrams)
        else:
            batches[source] = datagrams
    return [(datagrams, source) for source, datagrams in batches.items()]


def recv_batch_with_local(
    sock: socket.socket, limit: int = 64, max_bytes: int | None = None,
    aqm: CoDel | None = None, keep: Callable[[int, tuple[str, int]], bool] | None = None,
) -> list[tuple[list[bytes], Endpoint, str | None]]:
    """Like `recv_batch`, grouped by source and the local address each datagram was sent to
    (entries in the order of each one's first datagram).

    The local address is None unless `enable_pktinfo` was called on `sock`. With `max_bytes`,
    stops once that many bytes were read (one GRO read may go past it by up to 64 KiB).
    `keep` is asked with the first byte and the source (host, port) of each read, before
    anything else is spent on it; False drops it (a carrier sheds the kind of datagram a
    flood is made of, at the cost of the receive call and a lookup).
    """
    buffer, view = _receive.buffer, _receive.view
    batches: dict[tuple[str, int, str | None], list[bytes]] = {}
    bytes_read: dict[tuple[str, int, str | None], int] = {}  # kept, by source
    total = 0
    for _ in range(limit):
        if max_bytes is not None and total >= max_bytes:
            break
        try:
            size, ancillary, flags, address = sock.recvmsg_into(
                [buffer], _CMSG_SPACE, socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            break
        except ConnectionError:  # an ICMP error queued for a connected socket
            continue
        if flags & _MSG_TRUNC or (
                keep is not None and size and not keep(buffer[0], address[:2])):
            continue
        segment_size = size
        local = None
        received_at = None
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
                segment_size = struct.unpack("i", data[:4])[0] or size
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack(data)[0])
            elif level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                local = socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack(data)[1])
            elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIMESPEC.unpack(data[:_TIMESPEC.size])
                received_at = seconds + nanoseconds * 1e-9
        total += size
        key = (address[0], address[1], local)
        received = view[:size]
        # One timestamp for a GRO train. CoDel's drop goes to the source that brought the most
        # bytes in this read (as fq_codel drops from its fattest flow): a bulk flow, not the
        # many small peers whose datagrams make most of the dequeues, is told to back off.
        if (aqm is not None and received_at is not None
                and aqm.should_drop(time.time() - received_at, time.monotonic())):
            heaviest = max(bytes_read, key=bytes_read.__getitem__, default=key)
            if heaviest != key and bytes_read[heaviest] > size and batches[heaviest]:
                bytes_read[heaviest] -= len(batches[heaviest].pop(0))
            elif segment_size >= size:
                continue
            else:
                received = view[segment_size:size]
                size -= segment_size
        if segment_size >= size:
            datagrams = [bytes(received)]
        else:
            datagrams = [
                bytes(received[start:start + segment_size])
                for start in range(0, size, segment_size)
            ]
        bytes_read[key] = bytes_read.get(key, 0) + size
        if key in batches:
            batches[key].extend(datagrams)
        else:
            batches[key] = datagrams
    return [(datagrams, (host, port), local)
            for (host, port, local), datagrams in batches.items() if datagrams]


def send_batch(
    sock: socket.socket, datagrams: Sequence[bytes], destination: Endpoint,
    source: str | None = None,
) -> int:
    """Send `datagrams` to `destination`; returns how many the kernel accepted.

    Runs of equal-sized datagrams go out in one UDP_SEGMENT send. If the kernel refuses GSO
    for this socket, it sends one datagram per call from then on. `source` (a local address as
    `recv_batch_with_local` reports it) fixes the sending address; if the host no longer has
    it, the kernel picks one. A full buffer (EAGAIN, ENOBUFS) or an unreachable destination
    drops the datagrams concerned, as a full NIC queue would; the caller counts
    `len(datagrams) - returned` as dropped.
    """
    sent = 0
    use_gso = sock not in _sockets_without_gso
    wanted_origin = origin = _source_cmsg(sock, source)
    index, count = 0, len(datagrams)
    while index < count:
        group_end = _group_end(datagrams, index) if use_gso else index + 1
        group = datagrams[index:group_end]
        gso = [] if len(group) == 1 else [(SOL_UDP, UDP_SEGMENT, struct.pack("H", len(group[0])))]
        try:
            sock.sendmsg(group, gso + origin, socket.MSG_DONTWAIT, destination)
        except OSError as error:
            if origin and error.errno in _SOURCE_REFUSED:
                origin = []  # perhaps the address is gone: again, from any address
            elif gso and error.errno in _GSO_REFUSED:
                _sockets_without_gso.add(sock)
                use_gso, origin = False, wanted_origin  # again, one datagram per call
            else:
                index = group_end  # dropped
            continue
        sent += len(group)
        index = group_end
    return sent


def _source_cmsg(sock: socket.socket, source: str | None) -> list[tuple[int, int, bytes]]:
    if source is None:
        return []
    try:
        if sock.family == socket.AF_INET6:
            if "." in source and ":" not in source:
                source = "::ffff:" + source
            packed = socket.inet_pton(socket.AF_INET6, source)
            return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0))]
        packed = socket.inet_pton(socket.AF_INET, source)
    except OSError:
        return []
    return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, packed, bytes(4)))]


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
