"""aura-udp: the WireGuard responder on UDP. Stock WireGuard clients talk to this process."""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import Sequence

from aura_common.addresses import Endpoint
from aura_common.config import ServerConfig
from aura_common.netio import udp as udp_batch
from aura_common.netio.codel import CoDel
from aura_common.service.shell import run_service
from aura_common.transport.hub import (
    SessionHub,
    disabled,
    listening_socket,
    new_hub,
    serve_sessions,
)
from aura_common.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
)

# One wakeup reads at most this many datagrams (GRO trains count once) and bytes. Many times
# the core's handshake work per read (HANDSHAKE_WORK_BATCH), so handshakes that outpace it
# build the backlog that puts it under load; the bytes stay within 64 full GRO reads.
RECV_BATCH_LIMIT = 256
RECV_BATCH_BYTES = 4 << 20
# Handshake messages (types 1-3) passed on per read, to be screened (mac1, then a cookie reply
# or the rate limit) and queued; more are dropped as soon as their first byte and source are
# read. When a flood outpaces what this process can screen, the socket's buffer must not fill
# (the kernel would then drop data and junk alike): the read goes on at the cost of a
# recvmmsg slot and a lookup per shed message, and data is never shed. Messages the core would
# drop anyway (`Device.shed_first`: an endpoint just sent a cookie reply, a source out of its
# rate limit) have a small share of their own, in time rather than per read (reads come as
# often as data does), so a flood of them can neither crowd out a new client's initiation or
# a retry carrying its cookie, nor cost more than a few milliseconds of screening a second.
# Whatever is shed is what WireGuard's queue would hold past its mark: the device is under
# load (cookies needed) for a second after any read that sheds.
HANDSHAKES_PER_READ = 64
# Of one source, a read keeps no more than could pass its rate limit
# (`Device.handshakes_admissible`); the rest have the small share above.
# The last of those are kept for sources that would go ahead of the queue (`Device.goes_first`:
# none queued for 5 s, as a new client, or one retrying with its cookie): a flood from thousands
# of sources, each proven and within its rate limit, has its messages read first as often as
# not, and would otherwise take every place of a read before a new client's retry.
FRESH_RESERVE = 16
LIKELY_DROPPED_PER_SECOND = 200.0
LIKELY_DROPPED_BURST = 8
# Remote endpoints whose local address is remembered; the least recently heard go first, so
# a flood of spoofed sources costs bounded memory.
REPLY_ADDRESSES_LIMIT = 4096
HANDSHAKE_TYPES = frozenset({MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_COOKIE_REPLY})
# What a read makes of a handshake message's source (see `UdpCarrier._readable`).
_LIKELY_DROPPED, _FIRST, _OTHER = range(3)


class UdpCarrier:
    """Moves WireGuard datagrams between one UDP socket and the session hub, in batches.

    Replies leave from the address the remote last wrote to: on a host with several
    addresses, the kernel's own choice may be another one, which the client drops.
    """

    def __init__(self, sock: socket.socket, hub: SessionHub) -> None:
        self.sock = sock
        self.hub = hub
        hub.carrier = self
        self._reply_from: dict[Endpoint, str] = {}
        self._likely_dropped_tokens = float(LIKELY_DROPPED_BURST)
        self._likely_dropped_at = time.monotonic()
        self.aqm = CoDel()  # bounds the time datagrams wait in the socket's large buffer
        udp_batch.enlarge_buffers(sock)
        udp_batch.enable_gro(sock)
        udp_batch.enable_pktinfo(sock)
        udp_batch.enable_timestamps(sock)

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        reply_from = self._reply_from
        batches = []
        handshakes = shed = 0
        device, now = self.hub.device, time.monotonic()
        tokens = min(float(LIKELY_DROPPED_BURST), self._likely_dropped_tokens
                     + (now - self._likely_dropped_at) * LIKELY_DROPPED_PER_SECOND)
        # What the device says of a source holds for the whole read (nothing is screened
        # before it ends): asked once per source, so a flood from one endpoint costs a
        # lookup per message.
        kinds: dict[Endpoint, int] = {}
        admissible: dict[Endpoint, int] = {}  # more of the source's messages it may keep

        def keep(first_byte: int, source: Endpoint) -> bool:
            nonlocal handshakes, tokens, shed
            if first_byte not in HANDSHAKE_TYPES:
                return True
            kind = kinds.get(source)
            if kind is None:
                if device.shed_first(source, now):
                    kind = _LIKELY_DROPPED
                else:
                    kind = _FIRST if device.goes_first(source, now) else _OTHER
                    admissible[source] = device.handshakes_admissible(source, now)
                kinds[source] = kind
            if kind != _LIKELY_DROPPED:
                admissible[source] -= 1
                if admissible[source] < 0:
                    kind = kinds[source] = _LIKELY_DROPPED
            if kind == _LIKELY_DROPPED:
                kept = tokens >= 1.0
                tokens -= kept
            elif kind == _FIRST:  # one message: a real initiator sends no more at once
                kinds[source] = _OTHER
                kept = handshakes < HANDSHAKES_PER_READ
            else:
                kept = handshakes < HANDSHAKES_PER_READ - FRESH_RESERVE
            handshakes += kept and kind != _LIKELY_DROPPED
            shed += not kept
            return kept

        for datagrams, source, local in udp_batch.recv_batch_with_local(
                self.sock, RECV_BATCH_LIMIT, RECV_BATCH_BYTES, aqm=self.aqm, keep=keep):
            if local is not None:
                reply_from.pop(source, None)  # re-inserted last: dicts keep insertion order
                reply_from[source] = local
                if len(reply_from) > REPLY_ADDRESSES_LIMIT:
                    del reply_from[next(iter(reply_from))]
            batches.append((datagrams, source))
        self._likely_dropped_tokens, self._likely_dropped_at = tokens, now
        if shed:  # more handshake messages than are screened: that is load
            self.hub.counters.shed(shed)
            self.hub.device.handshakes_shed(now)
        if batches:
            self.hub.received_batches(batches)

    def transmit(self, destination: Endpoint, datagrams: Sequence[bytes]) -> None:
        udp_batch.send_batch(self.sock, datagrams, destination,
                             self._reply_from.get(destination))


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    if disabled(config, "udp"):
        return
    sock, activated = listening_socket(config, "udp", socket.SOCK_DGRAM)
    hub = new_hub(config, "udp")
    UdpCarrier(sock, hub).start()
    await serve_sessions(config, hub, sock, activated)


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-udp", "Aura WireGuard transport over UDP.", serve, argv)
