"""The data path: packets from the TUN into the live path, and payloads from it back.

Each readiness reads everything the TUN holds (up to `TUN_READ_LIMIT` reads) into a flow queue
(`netio.fq`), and each turn of the event loop seals and sends at most `TURN_BYTES` of it,
sparse flows first: a ping or an acknowledgement waits for one turn of a bulk upload, not for
its whole backlog in the kernel's TUN ring, and the backlog is bounded (CoDel, and a byte limit
sized to a few milliseconds at the rate it drains). Decrypted payloads that are IP packets go
to the TUN in one write, the rest are in-tunnel control messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aura_common.netio.fq import FlowQueue
from aura_common.wire.control import ControlError, ControlMessage, decode_control
from services.client.path import Path
from services.client.tunnel import TunnelDevice

log = logging.getLogger("aura-client")

TUN_READ_LIMIT = 256
# Bytes sealed and sent per turn of the event loop: between turns the loop reads the TUN
# again (new flows go first) and the carrier's socket (acknowledgements of the upload).
TURN_BYTES = 64 << 10


def new_counters() -> dict[str, int]:
    return {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0}


class DataPath:
    """`current` returns the path to send on: the live one, or the one being tried (None drops
    what the TUN gives). `control` gets each valid control message and `fatal` the reason the
    TUN stopped working."""

    def __init__(self, tun: TunnelDevice, current: Callable[[], Path | None],
                 control: Callable[[ControlMessage], None],
                 fatal: Callable[[str], None]) -> None:
        self.tun = tun
        self.current = current
        self.control = control
        self.fatal = fatal
        self.counters = new_counters()
        self.queue = FlowQueue()
        self._sending = False  # a turn of `_send_turn` is scheduled
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        self._loop.add_reader(self.tun.tun.fileno(), self._tun_readable)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.tun.tun.fileno())

    def _tun_readable(self) -> None:
        try:
            packets = self.tun.tun.read_batch(TUN_READ_LIMIT)
        except OSError as error:
            self._loop.remove_reader(self.tun.tun.fileno())
            self.fatal(f"reading {self.tun.name} failed: {error.strerror}")
            return
        if not packets:
            return
        path = self.current()
        if path is None:
            return
        if len(packets) == 1 and not self.queue:
            # A lone packet into an empty queue would come straight out of it again (an idle
            # ping, a keepalive): it is sent without the queue's work.
            self._send(path, packets)
            return
        self.queue.push(packets, time.monotonic())
        if not self._sending:
            self._send_turn()

    def _send_turn(self) -> None:
        self._sending = False
        path = self.current()
        packets = self.queue.pop(TURN_BYTES, time.monotonic())
        if packets and path is not None:
            self._send(path, packets)
        if self.queue:
            self._sending = True
            self._loop.call_soon(self._send_turn)

    def _send(self, path: Path, packets: list[bytes]) -> None:
        self.counters["tx_packets"] += len(packets)
        self.counters["tx_bytes"] += sum(map(len, packets))
        path.send(packets)

    def received(self, packets: list[bytes]) -> None:
        """Decrypted payloads from a path."""
        ip_packets = [p for p in packets if p[0] >> 4 in (4, 6)]
        if len(ip_packets) != len(packets):
            for payload in packets:
                if payload[0] >> 4 not in (4, 6):
                    self._control_payload(payload)
        if ip_packets:
            self.counters["rx_packets"] += len(ip_packets)
            self.counters["rx_bytes"] += sum(map(len, ip_packets))
            self.tun.tun.write_batch(ip_packets)

    def _control_payload(self, payload: bytes) -> None:
        try:
            message = decode_control(payload)
        except ControlError as error:
            log.warning("ignored a malformed control message: %s", error)
            return
        if message is None:
            log.debug("ignored a payload that is neither IP nor control")
            return
        self.control(message)
