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
initiations (made elsewhere, for peers the server knows) instead of junk. Prints one JSON
line: datagrams sent, replies received by message type, seconds spent.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from collections import OrderedDict
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


class Flooder:
    def __init__(self, target: tuple[str, int], server_public: bytes, sources: list[str],
                 cookies: bool, messages: list[bytes] | None = None) -> None:
        self.target = target
        self.family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        self.sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", 0))
        self.sock.setblocking(False)
        self.mac1_key = hashlib.blake2s(b"mac1----" + server_public).digest()
        self.cookie_key = hashlib.blake2s(b"cookie--" + server_public).digest()
        self.sources = sources
        self.cmsgs = [self._pktinfo(s) for s in sources] if sources else [[]]
        self.answer_cookies = cookies
        self.messages = messages  # real initiations to send in order, instead of junk
        self.cookies: dict[str, bytes] = {}
        self.pending: OrderedDict[int, tuple[str, bytes]] = OrderedDict()  # index -> (src, mac1)
        self.sent = 0
        self.replies: dict[int, int] = {}

    def _pktinfo(self, source: str) -> list[tuple[int, int, bytes]]:
        if self.family == socket.AF_INET:
            return [(socket.IPPROTO_IP, IP_PKTINFO,
                     _IN_PKTINFO.pack(0, socket.inet_aton(source), bytes(4)))]
        return [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                 _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, source), 0))]

    def send_one(self) -> None:
        slot = self.sent % len(self.cmsgs)
        source = self.sources[slot] if self.sources else ""
        if self.messages is not None:
            message = self.messages[self.sent]
            body, mac1 = message[:116], message[116:132]
            index = struct.unpack_from("<I", body, 4)[0]
        else:
            index = int.from_bytes(os.urandom(4), "little")
            body = struct.pack("<II", 1, index) + os.urandom(108)
            mac1 = hashlib.blake2s(body, digest_size=16, key=self.mac1_key).digest()
        cookie = self.cookies.get(source)
        mac2 = (hashlib.blake2s(body + mac1, digest_size=16, key=cookie).digest()
                if cookie is not None else bytes(16))
        try:
            self.sock.sendmsg([body + mac1 + mac2], self.cmsgs[slot], 0, self.target)
        except (BlockingIOError, OSError):
            return
        self.sent += 1
        if self.answer_cookies:
            self.pending[index] = (source, mac1)
            if len(self.pending) > 65536:
                self.pending.popitem(last=False)

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

        index = struct.unpack_from("<I", reply, 4)[0]
        pending = self.pending.pop(index, None)
        if pending is None:
            return
        source, mac1 = pending
        with contextlib.suppress(InvalidTag):  # a reply we cannot read proves nothing
            self.cookies[source] = xaead_open(self.cookie_key, reply[8:32], reply[32:64], mac1)

    def run(self, rate: float, seconds: float, count: int) -> dict[str, object]:
        rate, seconds = min(rate, MAX_RATE), min(seconds, MAX_SECONDS)
        if self.messages is not None:
            count = min(count, len(self.messages))
        started = time.monotonic()
        deadline = started + seconds
        while self.sent < count:
            now = time.monotonic()
            if now >= deadline:
                break
            due = min(count, int((now - started) * rate) + 1)
            while self.sent < due:
                self.send_one()
            self.drain()
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        time.sleep(0.3)
        self.drain()
        return {"sent": self.sent, "seconds": round(elapsed, 3),
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
                      args.cookies, messages)
    print(json.dumps(flooder.run(args.rate, args.seconds, args.count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
