"""UDP datagrams in batches: GSO (UDP_SEGMENT) sends and GRO (UDP_GRO) receives.

One `sendmsg` with a UDP_SEGMENT control message sends up to 64 equal-sized datagrams (the last
may be shorter); with UDP_GRO enabled, one receive may return many datagrams of one source
back to back, with their size in a control message; and one `recvmmsg` returns up to
MMSG_SLOTS such receives, from any sources. Python pays per call, so this is what lets a
transport move hundreds of megabits, and what keeps a flood of small datagrams from many
sources (no GRO for those) from costing a system call and a wakeup's Python each. Works for
IPv4 and IPv6 sockets, blocking or not (every call here is non-blocking).

A server bound to a wildcard address must answer from the address each client wrote to, not
from whichever address the kernel's route lookup picks: a client's connected socket, a NAT or a
firewall drops replies from any other address. `enable_pktinfo` makes the receive side report
that local address, and `send_batch(..., source=...)` sends from it.
"""

from __future__ import annotations

import _socket
import ctypes
import errno
import functools
import mmap
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from aura_common.addresses import Endpoint
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

_sockets_without_gso: weakref.WeakSet[socket.socket] = weakref.WeakSet()


# One recvmmsg call fills up to this many slots, each a receive of up to 64 KiB (a GRO train).
MMSG_SLOTS = 64
# What a call asks for is sized by the last call's receives to hold about this many bytes:
# all the slots for small datagrams, a few for GRO trains, whose bytes are then copied out
# while the cache still holds them (64 full trains would not fit, and cost more than the
# system calls saved).
CALL_BYTES = 256 << 10
_SLOT_SIZE = _RECV_SIZE
_NAME_SIZE = 28  # sockaddr_in6, the larger of the two families
# struct mmsghdr on 64-bit Linux: a msghdr (name, namelen, iov, iovlen, control, controllen,
# flags) then the received length. Read back: namelen, controllen, flags, length.
_MMSGHDR = struct.Struct("@PI4xPNPNi4xI4x")
_MMSGHDR_RESULT = struct.Struct("@8xI4x16x8xNi4xI4x")
_IOVEC = struct.Struct("@PN")
_CMSGHDR = struct.Struct("@Nii")  # cmsg_len, level, type; the data follows, aligned
_CMSG_ALIGN = struct.calcsize("N")
_CMSG_HEADER = _CMSGHDR.size  # a multiple of the alignment: where the data starts
_INT = struct.Struct("i")
_SOL_SOCKET, _IPPROTO_IP, _IPPROTO_IPV6 = socket.SOL_SOCKET, socket.IPPROTO_IP, socket.IPPROTO_IPV6
_IPV6_PKTINFO = socket.IPV6_PKTINFO
_libc = ctypes.CDLL(None, use_errno=True)
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                           ctypes.c_void_p]
_libc.recvmmsg.restype = ctypes.c_int
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
# Errors a receive reports for an earlier send (an ICMP error queued for a connected socket):
# the datagrams behind it are still there.
_SEND_ERRORS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH,
                          errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN})
# Told such an error (its errno) by a read or send of a connected socket: the kernel reports
# it once, to whichever call comes first, so asking for it before each call (SO_ERROR) costs
# a system call per read and send for nothing.
ErrorReport = Callable[[int], None]


class _ReceiveSlots(threading.local):
    """One set of recvmmsg slots per thread, reused by every read (reads copy out what they
    keep). The payload area is an anonymous mapping: pages cost memory only once a receive
    has written to them, so a socket that only ever gets small datagrams holds little."""

    def __init__(self) -> None:
        self.payloads = mmap.mmap(-1, MMSG_SLOTS * _SLOT_SIZE)
        self.names = bytearray(MMSG_SLOTS * _NAME_SIZE)
        self.controls = bytearray(MMSG_SLOTS * _CMSG_SPACE)
        self.iovecs = bytearray(MMSG_SLOTS * _IOVEC.size)
        self.headers = bytearray(MMSG_SLOTS * _MMSGHDR.size)
        self.view = memoryview(self.payloads)
        payloads, names, controls, iovecs = (
            ctypes.addressof(ctypes.c_char.from_buffer(area))
            for area in (self.payloads, self.names, self.controls, self.iovecs))
        for slot in range(MMSG_SLOTS):
            _IOVEC.pack_into(self.iovecs, slot * _IOVEC.size, payloads + slot * _SLOT_SIZE,
                             _SLOT_SIZE)
            _MMSGHDR.pack_into(self.headers, slot * _MMSGHDR.size,
                               names + slot * _NAME_SIZE, _NAME_SIZE,
                               iovecs + slot * _IOVEC.size, 1,
                               controls + slot * _CMSG_SPACE, _CMSG_SPACE, 0, 0)
        # The kernel writes each header's name and control lengths back: every call starts
        # from this copy.
        self.fresh_headers = bytes(self.headers)
        self.headers_address = ctypes.addressof(ctypes.c_char.from_buffer(self.headers))
        self.next_count = MMSG_SLOTS  # see CALL_BYTES

    def receive(self, sock: socket.socket, count: int, on_error: ErrorReport | None = None
                ) -> list[tuple[int, int, int, int]]:
        """Up to `count` receives (at most MMSG_SLOTS) in one call, without blocking: per
        slot filled, (name length, control length, flags, datagram length). An error queued
        for an earlier send goes to `on_error` (this read then returns nothing), or is
        skipped."""
        self.headers[:] = self.fresh_headers
        while True:
            received = _libc.recvmmsg(sock.fileno(), self.headers_address, count,
                                      _MSG_DONTWAIT, None)
            if received >= 0:
                return list(_MMSGHDR_RESULT.iter_unpack(
                    memoryview(self.headers)[:received * _MMSGHDR.size]))
            error = ctypes.get_errno()
            if error in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            if error in _SEND_ERRORS and on_error is not None:
                on_error(error)
                return []
            if error not in _SEND_ERRORS and error != errno.EINTR:
                raise OSError(error, f"recvmmsg: {errno.errorcode.get(error, error)}")


# Source addresses as the kernel wrote them -> (host, port): a flood's few thousand sources
# are converted once each, not per datagram. Bounded: emptied when full.
_ENDPOINTS_LIMIT = 8192
_endpoints: dict[bytes, Endpoint] = {}


_LOCAL_ADDRESSES_LIMIT = 256
_local_addresses: dict[tuple[int, bytes], str] = {}


def _local_address(level: int, pktinfo: bytes) -> str:
    """The local address an IP_PKTINFO / IPV6_PKTINFO message names (a host has few)."""
    local = _local_addresses.get((level, pktinfo))
    if local is None:
        if level == _IPPROTO_IPV6:
            local = socket.inet_ntop(socket.AF_INET6, _IN6_PKTINFO.unpack(pktinfo)[0])
        else:
            local = socket.inet_ntop(socket.AF_INET, _IN_PKTINFO.unpack(pktinfo)[1])
        if len(_local_addresses) >= _LOCAL_ADDRESSES_LIMIT:
            _local_addresses.clear()
        _local_addresses[level, pktinfo] = local
    return local


def _endpoint(name: bytes) -> Endpoint:
    endpoint = _endpoints.get(name)
    if endpoint is None:
        if int.from_bytes(name[:2], "little") == socket.AF_INET6:
            host = socket.inet_ntop(socket.AF_INET6, name[8:24])
            scope = int.from_bytes(name[24:28], "little")
            if scope and host.startswith("fe80:"):  # as Python's own recvmsg names it
                try:
                    host += "%" + socket.if_indextoname(scope)
                except OSError:
                    host += f"%{scope}"
        else:
            host = socket.inet_ntop(socket.AF_INET, name[4:8])
        endpoint = (host, int.from_bytes(name[2:4], "big"))
        if len(_endpoints) >= _ENDPOINTS_LIMIT:
            _endpoints.clear()
        _endpoints[name] = endpoint
    return endpoint


_slots = _ReceiveSlots()


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


def recv_batch(sock: socket.socket, limit: int = 64, aqm: CoDel | None = None,
               on_error: ErrorReport | None = None) -> list[tuple[list[bytes], Endpoint]]:
    """Datagrams waiting on `sock`, grouped by source, from at most `limit` receives (a
    datagram or a GRO train each; up to MMSG_SLOTS of them per system call).

    All the datagrams one source sent share one entry, in the order they came, even when
    other sources' datagrams came between them: a tunnel's packets stay one batch (one
    decryption run, one IPC frame) while a flood from elsewhere interleaves. Never blocks.
    With `aqm` (and `enable_timestamps`), it decides by the time each datagram waited which
    to drop. `on_error` is told an error the kernel queued for an earlier send (ICMP port
    unreachable on a connected socket); without it, such errors are skipped.
    """
    batches: dict[Endpoint, list[bytes]] = {}
    for datagrams, source, _local in recv_batch_with_local(sock, limit, aqm=aqm,
                                                           on_error=on_error):
        if source in batches:
            batches[source].extend(datagrams)
        else:
            batches[source] = datagrams
    return [(datagrams, source) for source, datagrams in batches.items()]


def recv_batch_with_local(
    sock: socket.socket, limit: int = 64, max_bytes: int | None = None,
    aqm: CoDel | None = None, keep: Callable[[int, tuple[str, int]], bool] | None = None,
    on_error: ErrorReport | None = None,
) -> list[tuple[list[bytes], Endpoint, str | None]]:
    """Like `recv_batch`, grouped by source and the local address each datagram was sent to
    (entries in the order of each one's first datagram).

    The local address is None unless `enable_pktinfo` was called on `sock`. With `max_bytes`,
    stops once that many bytes were read (one GRO read may go past it by up to 64 KiB).
    `keep` is asked with the first byte and the source (host, port) of each receive, before
    anything else is spent on it; False drops it (a carrier sheds the kind of datagram a
    flood is made of, at the cost of its slot in a receive call and a lookup).
    """
    slots = _slots
    view, names, controls = slots.view, slots.names, slots.controls
    unpack_cmsghdr, unpack_int = _CMSGHDR.unpack_from, _INT.unpack_from
    unpack_timespec = _TIMESPEC.unpack_from
    batches: dict[tuple[str, int, str | None], list[bytes]] = {}
    bytes_read: dict[tuple[str, int, str | None], int] = {}  # kept, by source
    total = received = 0
    while received < limit:
        count = min(slots.next_count, limit - received)
        if max_bytes is not None:
            if total >= max_bytes:
                break
            count = min(count, 1 + (max_bytes - total - 1) // _SLOT_SIZE)
        results = slots.receive(sock, count, on_error)
        received += len(results)
        if results:
            average = sum(result[3] for result in results) // len(results)
            slots.next_count = max(1, min(MMSG_SLOTS, CALL_BYTES // max(1, average)))
        for slot, (name_length, control_length, flags, size) in enumerate(results):
            if flags & _MSG_TRUNC:
                continue
            start, name_at = slot * _SLOT_SIZE, slot * _NAME_SIZE
            source = _endpoint(bytes(names[name_at:name_at + name_length]))
            if keep is not None and size and not keep(view[start], source):
                continue
            segment_size = size
            local = None
            received_at = None
            at = slot * _CMSG_SPACE
            end = at + control_length
            while at + _CMSG_HEADER <= end:
                length, level, kind = unpack_cmsghdr(controls, at)
                if length < _CMSG_HEADER:
                    break
                data = at + _CMSG_HEADER
                if kind == UDP_GRO and level == SOL_UDP:
                    segment_size = unpack_int(controls, data)[0] or size
                elif kind == SO_TIMESTAMPNS and level == _SOL_SOCKET:
                    seconds, nanoseconds = unpack_timespec(controls, data)
                    received_at = seconds + nanoseconds * 1e-9
                elif ((kind == _IPV6_PKTINFO and level == _IPPROTO_IPV6)
                      or (kind == IP_PKTINFO and level == _IPPROTO_IP)):
                    local = _local_address(level, bytes(controls[data:at + length]))
                at += (length + _CMSG_ALIGN - 1) & -_CMSG_ALIGN
            total += size
            key = (source[0], source[1], local)
            datagram = view[start:start + size]
            # One timestamp for a GRO train. CoDel's drop goes to the source that brought the
            # most bytes in this read (as fq_codel drops from its fattest flow): a bulk flow,
            # not the many small peers whose datagrams make most of the dequeues, is told to
            # back off.
            if (aqm is not None and received_at is not None
                    and aqm.should_drop(time.time() - received_at, time.monotonic())):
                heaviest = max(bytes_read, key=bytes_read.__getitem__, default=key)
                if heaviest != key and bytes_read[heaviest] > size and batches[heaviest]:
                    bytes_read[heaviest] -= len(batches[heaviest].pop(0))
                elif segment_size >= size:
                    continue
                else:
                    datagram = view[start + segment_size:start + size]
                    size -= segment_size
            if segment_size >= size:
                datagrams = [bytes(datagram)]
            else:
                datagrams = [
                    bytes(datagram[offset:offset + segment_size])
                    for offset in range(0, size, segment_size)
                ]
            bytes_read[key] = bytes_read.get(key, 0) + size
            if key in batches:
                batches[key].extend(datagrams)
            else:
                batches[key] = datagrams
        if len(results) < count:  # the socket is empty: no need to ask again
            break
    return [(datagrams, (host, port), local)
            for (host, port, local), datagrams in batches.items() if datagrams]


def send_batch(
    sock: socket.socket, datagrams: Sequence[bytes], destination: Endpoint,
    source: str | None = None, on_error: ErrorReport | None = None,
) -> int:
    """Send `datagrams` to `destination`; returns how many the kernel accepted.

    Runs of equal-sized datagrams go out in one UDP_SEGMENT send. If the kernel refuses GSO
    for this socket, it sends one datagram per call from then on. `source` (a local address as
    `recv_batch_with_local` reports it) fixes the sending address; if the host no longer has
    it, the kernel picks one. A full buffer (EAGAIN, ENOBUFS) or an unreachable destination
    drops the datagrams concerned, as a full NIC queue would; the caller counts
    `len(datagrams) - returned` as dropped. With `on_error`, an unreachable destination (or
    an ICMP error queued for a connected socket) is told to it and ends the send.
    """
    sent = 0
    # A lone datagram (a server's reply to each of many peers) needs no segmentation, and
    # asking the weak set whether the socket refused it costs a third of its Python.
    use_gso = len(datagrams) > 1 and sock not in _sockets_without_gso
    wanted_origin = origin = _source_cmsg(sock, source)
    index, count = 0, len(datagrams)
    while index < count:
        group_end = _group_end(datagrams, index) if use_gso else index + 1
        group = datagrams[index:group_end]
        gso: _ControlMessages = (() if len(group) == 1 else
                                 ((SOL_UDP, UDP_SEGMENT, struct.pack("H", len(group[0]))),))
        try:
            sock.sendmsg(group, gso + origin, socket.MSG_DONTWAIT, destination)
        except OSError as error:
            if origin and error.errno in _SOURCE_REFUSED:
                origin = ()  # perhaps the address is gone: again, from any address
            elif gso and error.errno in _GSO_REFUSED:
                _sockets_without_gso.add(sock)
                use_gso, origin = False, wanted_origin  # again, one datagram per call
            elif on_error is not None and error.errno in _SEND_ERRORS:
                on_error(error.errno)
                return sent
            else:
                index = group_end  # dropped
            continue
        sent += len(group)
        index = group_end
    return sent


_ControlMessages = tuple[tuple[int, int, bytes], ...]
# A socket's address family as the plain int the C socket holds: `socket.socket.family`
# converts it to an enum member on every read, and hashing that costs as much again.
_family: Callable[[socket.socket], int] = _socket.socket.family.__get__


def _source_cmsg(sock: socket.socket, source: str | None) -> _ControlMessages:
    if source is None:
        return ()
    return _pktinfo(_family(sock), source)


@functools.lru_cache(maxsize=1024)
def _pktinfo(family: int, source: str) -> _ControlMessages:
    """The control message that sends from `source`. Cached: a server sends from one or a few
    addresses, once per destination a read or frame held (a thousand peers' replies are a
    thousand sends), and the conversion cost more than the rest of a send's Python."""
    try:
        if family == socket.AF_INET6:
            if "." in source and ":" not in source:
                source = "::ffff:" + source
            packed = socket.inet_pton(socket.AF_INET6, source)
            return ((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(packed, 0)),)
        packed = socket.inet_pton(socket.AF_INET, source)
    except OSError:
        return ()
    return ((socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, packed, bytes(4))),)


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
