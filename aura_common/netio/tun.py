"""A TUN device with virtio-net headers and TCP offloads, read and written in batches.

With offloads on, the kernel hands over TCP super-packets of up to 64 KiB in one read and
accepts them in one write; `offload.segment()` and `offload.coalesce()` translate between those
and the MTU-sized IP packets the rest of Aura handles. The device is non-blocking.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from aura_common.errors import AuraError
from aura_common.netio.offload import VNET_HDR_LEN, coalesce, segment

TUN_DEVICE = "/dev/net/tun"

_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_TUNSETVNETHDRSZ = 0x400454D8
_SIOCSIFMTU = 0x8922
_SIOCSIFTXQLEN = 0x8943

_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000

# TSO_ECN lets the kernel hand over super-packets of ECN flows (CWR set) instead of cutting
# them up itself first; segment() clears CWR on all but the first segment as required.
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6, _TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
_OFFLOADS = _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6 | _TUN_F_TSO_ECN

# The largest frame a read can return: header, then an IPv6 packet whose 16-bit payload
# length is at its maximum.
_READ_SIZE = VNET_HDR_LEN + 40 + 0xFFFF

# Packets the kernel routes into the device wait for our reads in a ring of this many, and are
# dropped when it is full (`ip -s link`: TX dropped). The default, 500, is 50 ms of 10,000
# small packets a second: less than a busy host can keep the reading process from running,
# so pings and acknowledgements were lost there. A TCP flow holds at most its window in it,
# in 64 KiB super-packets (a hundred or so), so the deeper ring makes room for small packets
# rather than a standing queue for bulk ones.
QUEUE_PACKETS = 2048


@dataclass(slots=True)
class TunCounters:
    reads: int = 0  # read() calls that returned a frame
    packets_read: int = 0  # IP packets those frames held after segmentation
    read_drops: int = 0  # frames dropped as malformed
    writes: int = 0  # write() calls the kernel accepted
    packets_written: int = 0  # IP packets handed to write_batch
    write_errors: int = 0  # frames the kernel refused (e.g. EINVAL)
    write_drops: int = 0  # frames dropped because the device queue was full (EAGAIN)


class Tun:
    """An open TUN device; use `Tun.open()`."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self.name = name
        self.counters = TunCounters()

    @classmethod
    def open(cls, name: str, *, mtu: int) -> Tun:
        """Create (or attach to) TUN device `name` in the current network namespace."""
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            raise AuraError(f"cannot open {TUN_DEVICE}: {error.strerror}") from error
        try:
            request = struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI | _IFF_VNET_HDR)
            reply = fcntl.ioctl(fd, _TUNSETIFF, request)
            actual = reply[:16].split(b"\0", 1)[0].decode()
            fcntl.ioctl(fd, _TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(fd, _TUNSETOFFLOAD, _OFFLOADS)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as control:
                fcntl.ioctl(control, _SIOCSIFMTU, struct.pack("16si20x", actual.encode(), mtu))
                fcntl.ioctl(control, _SIOCSIFTXQLEN,
                            struct.pack("16si20x", actual.encode(), QUEUE_PACKETS))
        except OSError as error:
            os.close(fd)
            raise AuraError(
                f"cannot set up TUN device {name!r} (mtu {mtu}, queue {QUEUE_PACKETS}): "
                f"{error.strerror}"
            ) from error
        return cls(fd, actual)

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def read_batch(self, limit: int = 256, max_bytes: int | None = None) -> list[bytes]:
        """Plain IP packets from up to `limit` reads, and with `max_bytes`, until that many
        bytes were read (the last read may pass it); stops early when nothing is waiting."""
        packets: list[bytes] = []
        counters = self.counters
        total = 0
        for _ in range(limit):
            try:
                frame = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            counters.reads += 1
            pieces = segment(frame[:VNET_HDR_LEN], frame[VNET_HDR_LEN:])
            if not pieces:
                counters.read_drops += 1
            packets += pieces
            total += len(frame)
            if max_bytes is not None and total >= max_bytes:
                break
        counters.packets_read += len(packets)
        return packets

    def write_batch(self, packets: Sequence[bytes]) -> None:
        """Write IP packets, merging TCP segments; failures are counted, never raised.

        The packets must come out of the tunnel's AEAD: merged segments' checksums are not
        re-verified (see `offload.coalesce`)."""
        counters = self.counters
        counters.packets_written += len(packets)
        for header, packet in coalesce(packets):
            try:
                os.writev(self._fd, (header, packet))
            except BlockingIOError:
                counters.write_drops += 1
            except OSError:
                counters.write_errors += 1
            else:
                counters.writes += 1
