"""The receive path: data messages opened, handshake messages set aside to be screened.

Per data message: one struct operation, one dict lookup, one AEAD call on the cipher object
the keypair caches, the replay window and the IP length check. Bookkeeping (endpoint, counters,
timers, events) happens once per run of messages from one peer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidTag

from ..addresses import Endpoint
from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_TIME,
    RESPONSE_SIZE,
)
from .events import Dropped, Event, Received
from .indextable import IndexTable
from .messages import TRANSPORT_HEADER
from .peer import Peer

_NONCE_PREFIX = bytes(4)
_HANDSHAKE_SIZES = {MESSAGE_INITIATION: INITIATION_SIZE, MESSAGE_RESPONSE: RESPONSE_SIZE,
                    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE}

# (datagram, source, now, events) or (peer, now, events): what the device does for the path.
MessageHandler = Callable[[bytes, Endpoint, float, list[Event]], None]
PeerHandler = Callable[[Peer, float, list[Event]], None]


class Receiver:
    """Opens runs of datagrams; hands the device what is not data.

    `other`: a message that is neither data nor of a handshake type and size; `confirmed`: a
    peer's new keys are confirmed (its handshake completed); `rekey`: a peer should start a
    handshake unless one is pending.
    """

    __slots__ = ("_confirmed", "_keypairs", "_other", "_rekey")

    def __init__(self, index: IndexTable, *, other: MessageHandler,
                 confirmed: PeerHandler, rekey: PeerHandler) -> None:
        self._keypairs = index.keypairs
        self._other = other
        self._confirmed = confirmed
        self._rekey = rekey

    def run(self, datagrams: Sequence[bytes], source: Endpoint, now: float,
            events: list[Event], handshakes: list[tuple[bytes, Endpoint]]) -> None:
        """Datagrams from one source, in order; messages of a handshake type and size are
        appended to `handshakes` instead, for the device to screen after the data of the
        whole read (a flood of them delays no data)."""
        keypairs = self._keypairs
        unpack_header = TRANSPORT_HEADER.unpack_from
        run_peer: Peer | None = None
        run_packets: list[bytes] = []
        run_bytes = 0
        run_has_data = False
        for datagram in datagrams:
            size = len(datagram)
            if size >= KEEPALIVE_SIZE and datagram[0] == MESSAGE_TRANSPORT:
                type_word, index, counter = unpack_header(datagram)
                entry = keypairs.get(index)
                if type_word != MESSAGE_TRANSPORT or entry is None:
                    events.append(Dropped("unknown receiver index" if type_word == MESSAGE_TRANSPORT
                                          else "nonzero reserved bytes", source))
                    continue
                keypair, peer = entry
                receiver = keypair.receiver
                if receiver is None or now - keypair.created >= REJECT_AFTER_TIME:
                    events.append(Dropped("session expired", source))
                    continue
                try:
                    payload = receiver.decrypt(_NONCE_PREFIX + datagram[8:16], datagram[16:], None)
                except InvalidTag:
                    events.append(Dropped("data did not authenticate", source))
                    continue
                if not keypair.accept_counter(counter):
                    events.append(Dropped("replayed data", source))
                    continue
                if peer is not run_peer:
                    if run_peer is not None:
                        self._finish(run_peer, run_packets, run_bytes, run_has_data, source,
                                     now, events)
                    run_peer, run_packets, run_bytes, run_has_data = peer, [], 0, False
                if keypair is not peer.current and peer.confirm(keypair, source):
                    self._confirmed(peer, now, events)
                run_bytes += size
                if not payload:
                    continue  # keepalive
                run_has_data = True
                version = payload[0] >> 4
                if version == 4:
                    length = (payload[2] << 8 | payload[3]) if len(payload) >= 20 else 0
                    if length < 20 or length > len(payload):
                        events.append(Dropped("malformed IPv4 packet", source))
                        continue
                    if length != len(payload):
                        payload = payload[:length]
                elif version == 6:
                    length = (40 + (payload[4] << 8 | payload[5])) if len(payload) >= 40 else 0
                    if length < 40 or length > len(payload):
                        events.append(Dropped("malformed IPv6 packet", source))
                        continue
                    if length != len(payload):
                        payload = payload[:length]
                run_packets.append(payload)
                continue
            if run_peer is not None:
                self._finish(run_peer, run_packets, run_bytes, run_has_data, source, now, events)
                run_peer = None
            if size and _HANDSHAKE_SIZES.get(datagram[0]) == size:
                handshakes.append((datagram, source))
            else:
                self._other(datagram, source, now, events)
        if run_peer is not None:
            self._finish(run_peer, run_packets, run_bytes, run_has_data, source, now, events)

    def _finish(self, peer: Peer, packets: list[bytes], size: int, has_data: bool,
                source: Endpoint, now: float, events: list[Event]) -> None:
        peer.endpoint = source
        peer.rx_bytes += size
        if peer.timers.received(now, has_data, peer.current):
            self._rekey(peer, now, events)
        if packets:
            events.append(Received(peer, packets))
