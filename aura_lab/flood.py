"""Handshake floods against an Aura server in a test namespace, bounded in rate, count and time.

    python3 -m aura_lab.flood --target HOST:PORT --server-public HEX --rate 10000 \
        --seconds 10 [--sources N --family 4|6] [--cookies]

Runs inside an attacker namespace made by `attacker_namespace()`: that namespace treats two
whole test prefixes as its own (AnyIP local routes), and the server routes them back to it,
so each initiation can leave from another source address and still hear its cookie reply.
Every initiation carries a valid mac1 (the server's public key is public) and garbage where
the initiator's keys would be. With `--cookies` the flooder answers each cookie reply by
proving its source address: later initiations from that address carry a valid mac2, so they
pass the cookie check and meet the per-source rate limit. With `--messages`, it sends real
initiations (made elsewhere, for peers the server knows) instead of junk; `--rest` makes each
source pause after a cookie reply as a real client does. Prints one JSON line: datagrams
sent, replies received by message type, seconds spent and the flooder's own CPU seconds.

The flooder shares the machine with the server it measures, so it costs as little as it can:
every datagram is built before the clock starts and the kernel gets them in batches.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aura_lab.netns import Lab
    from aura_lab.topology import AuraServer

SPOOF_V4 = ipaddress.ip_network("10.200.0.0/16")
SPOOF_V6 = ipaddress.ip_network("2001:db8:a000::/48")
ATTACKER_V4, SERVER_V4 = "198.51.200.2", "198.51.200.1"
ATTACKER_V6, SERVER_V6 = "fd00:a77::2", "fd00:a77::1"
MAX_RATE = 10_000  # initiations per second
MAX_SECONDS = 60.0
CATCH_UP = 0.02  # seconds of sending that a stalled flooder may make up in one burst
IP_FREEBIND = 15
IP_PKTINFO = 8
_IN_PKTINFO = struct.Struct("=i4s4s")
_IN6_PKTINFO = struct.Struct("=16si")


def junk_initiation(server_public: bytes) -> bytes:
    """An initiation from nobody with a valid mac1: all an outsider needs is the public key."""
    mac1_key = hashlib.blake2s(b"mac1----" + server_public).digest()
    body = struct.pack("<I", 1) + os.urandom(112)
    return body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + bytes(16)


def attacker_namespace(lab: Lab, server: AuraServer) -> str:
    """A namespace linked to the server (IPv4 and IPv6) that owns SPOOF_V4 and SPOOF_V6."""
    ns = lab.namespace("atk")
    lab.link(ns, f"{ATTACKER_V4}/24", server.ns, f"{SERVER_V4}/24",
             v6=(f"{ATTACKER_V6}/64", f"{SERVER_V6}/64"))
    lab.run(ns, f"ip route add local {SPOOF_V4} dev lo")
    lab.run(ns, f"ip -6 route add local {SPOOF_V6} dev lo")
    lab.run(server.ns, f"ip route add {SPOOF_V4} via {ATTACKER_V4}")
    lab.run(server.ns, f"ip -6 route add {SPOOF_V6} via {ATTACKER_V6}")
    return ns


def source_addresses(family: int, count: int) -> list[str]:
    """`count` source addresses: IPv4 ones in SPOOF_V4, IPv6 ones each in its own /64."""
    if family == 4:
        base = int(SPOOF_V4.network_address)
        return [str(ipaddress.IPv4Address(base + 1 + n)) for n in range(count)]
    base = int(SPOOF_V6.network_address)
    return [str(ipaddress.IPv6Address(base + (n << 64) + 1)) for n in range(count)]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]


class Flooder:
    """Sends initiations at a bounded rate, as cheaply as it can: the flood must cost the
    machine it shares with the server (and the client measured) as little as possible.

    Every datagram is built before the clock starts, in memory the kernel reads from directly:
    a pool of junk initiations (each source address its own few), or the real ones given. The
    send loop hands the kernel a batch per wakeup (`sendmmsg`), each datagram with its source
    address as ancillary data. A cookie reply writes mac2 into that source's datagrams once,
    not per send.
    """

    POOL = 1024  # junk initiations at least, cycled; every source has at least one

    def __init__(self, target: tuple[str, int], server_public: bytes, sources: list[str],
                 cookies: bool, messages: list[bytes] | None = None,
                 rest: float = 0.0) -> None:
        self.family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        self.sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        self.sock.setblocking(False)
        self.cookie_key = hashlib.blake2s(b"cookie--" + server_public).digest()
        self.sources = sources or [""]
        self.answer_cookies = cookies
        # A source that got a cookie reply sends nothing for this long (a real client tries
        # again REKEY_TIMEOUT later); 0: it goes on at once, as a flood does.
        self.rest = rest
        self.resting: dict[int, float] = {}  # source slot -> until
        self.cookies: dict[int, bytes] = {}  # source slot -> cookie
        self.sent = 0
        self.position = 0  # datagrams sent or passed over (resting sources skip theirs)
        self.replies: dict[int, int] = {}
        self._destination = self._sockaddr(target)
        self._controls = [self._pktinfo(s) if s else None for s in self.sources]
        if messages is None:
            mac1_key = hashlib.blake2s(b"mac1----" + server_public).digest()
            per_source = -(-self.POOL // len(self.sources))
            messages = []
            for _ in range(per_source):
                for _ in self.sources:
                    body = struct.pack("<I", 1) + os.urandom(112)
                    messages.append(
                        body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest()
                        + bytes(16))
            self.cycle = True
        else:
            self.cycle = False
        self.count = len(messages)
        # Each datagram's slot, as long as one keeps its source (junk): sender index -> slot.
        self.slot_of = [n % len(self.sources) for n in range(self.count)]
        self.buffer = ctypes.create_string_buffer(b"".join(messages), self.count * 148)
        base = ctypes.addressof(self.buffer)
        self.iovecs = (_IoVec * self.count)(*(_IoVec(base + 148 * n, 148)
                                               for n in range(self.count)))
        self.headers = (_MMsgHdr * self.count)()
        for n, header in enumerate(self.headers):
            header.hdr.name = ctypes.addressof(self._destination)
            header.hdr.namelen = ctypes.sizeof(self._destination)
            header.hdr.iov = ctypes.pointer(self.iovecs[n])
            header.hdr.iovlen = 1
            self._set_source(n, self.slot_of[n])
        self.by_index = {struct.unpack_from("<I", message, 4)[0]: n
                         for n, message in enumerate(messages)}

    def _sockaddr(self, target: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
        host, port = target
        if self.family == socket.AF_INET:
            raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) \
                + socket.inet_aton(host) + bytes(8)
        else:
            raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) \
                + socket.inet_pton(socket.AF_INET6, host) + bytes(4)
        return ctypes.create_string_buffer(raw, len(raw))

    def _pktinfo(self, source: str) -> ctypes.Array[ctypes.c_char]:
        """The ancillary data that sends a datagram from `source`."""
        if self.family == socket.AF_INET:
            level, kind = socket.IPPROTO_IP, IP_PKTINFO
            data = _IN_PKTINFO.pack(0, socket.inet_aton(source), bytes(4))
        else:
            level, kind = socket.IPPROTO_IPV6, socket.IPV6_PKTINFO
            data = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, source), 0)
        raw = struct.pack("@Nii", socket.CMSG_LEN(len(data)), level, kind) + data
        raw = raw.ljust(socket.CMSG_SPACE(len(data)), b"\0")
        return ctypes.create_string_buffer(raw, len(raw))

    def _set_source(self, n: int, slot: int) -> None:
        control = self._controls[slot]
        header = self.headers[n].hdr
        header.control = None if control is None else ctypes.addressof(control)
        header.controllen = 0 if control is None else ctypes.sizeof(control)

    def _message(self, n: int) -> bytes:
        return ctypes.string_at(ctypes.addressof(self.buffer) + 148 * n, 148)

    def _sign(self, n: int, slot: int) -> None:
        """Writes mac2 for the cookie `slot` holds (zeros if none) into datagram `n`."""
        cookie = self.cookies.get(slot)
        message = self._message(n)
        mac2 = (hashlib.blake2s(message[:132], digest_size=16, key=cookie).digest()
                if cookie is not None else bytes(16))
        ctypes.memmove(ctypes.addressof(self.buffer) + 148 * n + 132, mac2, 16)

    def send(self, due: int) -> None:
        """Sends the datagrams due (up to position `due`), each from its own source (datagram
        n from source n modulo their number, so a peer's real initiations all leave from the
        sources of that peer, in order); those of a resting source are passed over."""
        while self.position < due:
            n = self.position % self.count
            batch = min(due - self.position, self.count - n)
            if self.resting:
                now = time.monotonic()
                for m in range(n, n + batch):
                    until = self.resting.get(self.slot_of[m])
                    if until is not None and until > now:
                        batch = m - n
                        break
                if not batch:
                    self.position += 1
                    continue
            done = _libc.sendmmsg(self.sock.fileno(),
                                  ctypes.addressof(self.headers) + n * ctypes.sizeof(_MMsgHdr),
                                  batch, 0)
            if done <= 0:
                return  # the socket buffer is full: what is due goes in a later batch
            self.position += done
            self.sent += done
            if done < batch:
                return

    def drain(self) -> None:
        while True:
            try:
                reply = self.sock.recv(2048)
            except BlockingIOError:
                return
            if not reply:
                continue
            self.replies[reply[0]] = self.replies.get(reply[0], 0) + 1
            if self.answer_cookies and reply[0] == 3 and len(reply) == 64:
                self._take_cookie(reply)

    def _take_cookie(self, reply: bytes) -> None:
        from cryptography.exceptions import InvalidTag

        from aura_common.wireguard.crypto import xaead_open

        n = self.by_index.get(struct.unpack_from("<I", reply, 4)[0])
        if n is None:
            return
        slot, mac1 = self.slot_of[n], self._message(n)[116:132]
        try:
            self.cookies[slot] = xaead_open(self.cookie_key, reply[8:32], reply[32:64], mac1)
        except InvalidTag:  # a reply we cannot read proves nothing
            return
        if self.rest:
            self.resting[slot] = time.monotonic() + self.rest
        for m in range(slot, self.count, len(self.sources)):  # with the cookie from now on
            self._sign(m, slot)

    def run(self, rate: float, seconds: float, count: int, warmup: float = 0.0
            ) -> dict[str, object]:
        """Sends for `warmup` + `seconds` (at most MAX_SECONDS in all); the report (datagrams
        sent, replies by type, seconds, the flooder's own CPU seconds) counts after the
        warm-up only."""
        rate = min(rate, MAX_RATE)
        warmup = min(warmup, MAX_SECONDS)
        seconds = min(seconds, MAX_SECONDS - warmup)
        if not self.cycle:
            count = min(count, self.count)
        started = time.monotonic()
        measured_from, deadline = started + warmup, started + warmup + seconds
        counting, counted_from, cpu = not warmup, 0, time.process_time()
        while self.position < count:
            now = time.monotonic()
            if now >= deadline:
                break
            if not counting and now >= measured_from:
                counting, counted_from, cpu = True, self.sent, time.process_time()
                self.replies.clear()
            due = int((now - started) * rate) + 1
            if due - self.position > rate * CATCH_UP:  # what it could not send is not owed
                started += (due - self.position - rate * CATCH_UP) / rate
            self.send(min(count, int((now - started) * rate) + 1))
            self.drain()
            time.sleep(0.002)
        elapsed = time.monotonic() - measured_from if counting else 0.0
        cpu = time.process_time() - cpu
        time.sleep(0.3)
        self.drain()
        return {"sent": self.sent - counted_from, "seconds": round(elapsed, 3),
                "cpu_seconds": round(cpu, 3),
                "replies": {str(k): v for k, v in sorted(self.replies.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT ([v6]:PORT)")
    parser.add_argument("--server-public", required=True, help="hex")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--count", type=int, default=MAX_RATE * int(MAX_SECONDS))
    parser.add_argument("--sources", type=int, default=0,
                        help="spoofed source addresses to cycle through (0: the link address)")
    parser.add_argument("--cookies", action="store_true")
    parser.add_argument("--messages", type=argparse.FileType("rb"),
                        help="initiations (148 bytes each, back to back) to send instead of junk")
    parser.add_argument("--rest", type=float, default=0.0,
                        help="seconds a source sends nothing after a cookie reply (--messages)")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds sent before the report starts counting")
    args = parser.parse_args(argv)
    host, port = args.target.rsplit(":", 1)
    host = host.strip("[]")
    family = 6 if ":" in host else 4
    sources = source_addresses(family, args.sources) if args.sources else []
    messages = None
    if args.messages is not None:
        data = args.messages.read()
        messages = [data[i:i + 148] for i in range(0, len(data) - 147, 148)]
    flooder = Flooder((host, int(port)), bytes.fromhex(args.server_public), sources,
                      args.cookies, messages, rest=args.rest)
    print(json.dumps(flooder.run(args.rate, args.seconds, args.count, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
