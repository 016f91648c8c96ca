"""The WireGuard device: peers, sessions, timers. Datagrams and time in, events out; no I/O.

A device built with the static private key answers (and makes) handshakes itself. One built
with only the public key (a server transport) holds no secret: it admits initiations (mac1,
cookies and rate limit under load) and hands them out as `HandshakeRequested`; the
`HandshakeAuthority` that holds the keys answers, and `complete_handshake` installs the
answer. Such a device never initiates: its peers (clients) rekey by themselves.

`receive` and `send` are the data path: per packet they do one struct operation, one AEAD call
on a cipher object cached in the keypair and a few integer operations; bookkeeping (endpoint,
timers, events) happens once per run of packets from one peer.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import AuraError
from .authority import Answer, HandshakeAuthority
from .constants import (
    COOKIE_REPLY_SIZE,
    DEFAULT_MTU,
    INITIATION_SIZE,
    KEEPALIVE_SIZE,
    KEEPALIVE_TIMEOUT,
    KEY_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER,
    RESPONSE_SIZE,
    ZERO_KEYS_AFTER,
)
from .cookie import CookieChecker, CookieJar, CookiePacer, Load, RateLimiter
from .crypto import dh, tai64n
from .events import (
    Dropped,
    Endpoint,
    Event,
    HandshakeCompleted,
    HandshakeRequested,
    Received,
    SessionExpired,
    Transmit,
)
from .keypair import Keypair
from .limits import (
    HANDSHAKE_QUEUE_SIZE,
    HANDSHAKE_WORK_BATCH,
    MAX_QUEUED_PACKETS,
    UNDER_LOAD_BACKLOG,
)
from .messages import (
    INITIATION_MAC1_OFFSET,
    RESPONSE_MAC1_OFFSET,
    TRANSPORT_HEADER,
    TYPE_WORD,
    CookieReply,
    Initiation,
    MessageError,
    Response,
)
from .noise import (
    HandshakeError,
    InitiatorState,
    consume_response,
    create_initiation,
    initial_hash_for,
)

_NONCE_PREFIX = bytes(4)
_ZEROS = bytes(16)
_NEVER = float("-inf")
_HANDSHAKE_SIZES = {MESSAGE_INITIATION: INITIATION_SIZE, MESSAGE_RESPONSE: RESPONSE_SIZE,
                    MESSAGE_COOKIE_REPLY: COOKIE_REPLY_SIZE}


class Peer:
    """A remote WireGuard peer and its session state. Public attributes are the driver's view."""

    __slots__ = (
        "_cookies",
        "_current",
        "_handshake",
        "_handshake_sent",
        "_handshake_started",
        "_initial_hash",
        "_keepalive_due",
        "_last_received",
        "_last_sent",
        "_last_timestamp_sent_ns",
        "_next",
        "_previous",
        "_queue",
        "_rehandshake_due",
        "_rekeyed_on_receive",
        "_retransmit_at",
        "_session_alive",
        "_static_static",
        "_zero_keys_at",
        "context",
        "endpoint",
        "keepalive",
        "last_handshake",
        "preshared_key",
        "public_key",
        "rx_bytes",
        "tx_bytes",
    )

    def __init__(self, public_key: bytes, static_static: bytes | None, *,
                 preshared_key: bytes | None,
                 endpoint: Endpoint | None, keepalive: float | None) -> None:
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.keepalive = keepalive
        self.last_handshake: float | None = None
        self.context: object = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self._static_static = static_static
        self._initial_hash = initial_hash_for(public_key)
        self._cookies = CookieJar(public_key)
        self._previous: Keypair | None = None
        self._current: Keypair | None = None
        self._next: Keypair | None = None
        self._handshake: InitiatorState | None = None
        self._handshake_started = _NEVER
        self._handshake_sent = _NEVER
        self._retransmit_at = _NEVER
        self._last_timestamp_sent_ns = 0
        self._queue: deque[bytes] = deque(maxlen=MAX_QUEUED_PACKETS)
        self._last_sent = _NEVER
        self._last_received = _NEVER
        self._keepalive_due: float | None = None
        self._rehandshake_due: float | None = None
        self._zero_keys_at: float | None = None
        self._rekeyed_on_receive = False
        self._session_alive = False

    def __repr__(self) -> str:
        return f"Peer({self.public_key.hex()[:8]}…, endpoint={self.endpoint})"

    def has_session(self, now: float) -> bool:
        """Whether the peer holds keys that may still carry data."""
        return any(
            keypair is not None and keypair.receiver is not None
            and now - keypair.created < REJECT_AFTER_TIME
            for keypair in (self._current, self._next)
        )

    @property
    def session_ticket(self) -> bytes:
        """The authority's ticket for the handshake of the current keys (b"" if none)."""
        return self._current.ticket if self._current is not None else b""


class Device:
    """One local static key and the peers allowed to talk to it.

    Give `private_key`, or only `public_key` for a device whose handshakes a
    `HandshakeAuthority` elsewhere answers (see the module's docstring).
    """

    def __init__(self, private_key: bytes | None = None, *, public_key: bytes | None = None,
                 rng: Callable[[int], bytes] = os.urandom,
                 under_load_after: int = UNDER_LOAD_BACKLOG, mtu: int = DEFAULT_MTU,
                 idle_timeout: float | None = None) -> None:
        if (private_key is None) == (public_key is None):
            raise AuraError("a WireGuard device needs its private key or (only) its public key")
        self._static: X25519PrivateKey | None = None
        self._authority: HandshakeAuthority | None = None
        if private_key is not None:
            self._authority = HandshakeAuthority(private_key, rng=rng)
            self._static = X25519PrivateKey.from_private_bytes(private_key)
            public_key = self._authority.public_key
        assert public_key is not None
        if len(public_key) != KEY_SIZE:
            raise AuraError(
                f"WireGuard public key must be {KEY_SIZE} bytes, got {len(public_key)}"
            )
        self.public_key = public_key
        self.mtu = mtu
        # End a session after this long without an authenticated message from the peer
        # (data, keepalive or handshake); None: only key expiry ends it.
        self.idle_timeout = idle_timeout
        self._rng = rng
        self._initial_hash = initial_hash_for(self.public_key)
        self._cookie_checker = CookieChecker(self.public_key, rng)
        self._load = Load(under_load_after)
        self._rate_limiter = RateLimiter()
        self._cookie_pacer = CookiePacer()
        self._handshake_queue: deque[tuple[bytes, Endpoint]] = deque()
        self._peers: dict[bytes, Peer] = {}
        self._keypairs: dict[int, Keypair] = {}
        self._handshakes: dict[int, Peer] = {}
        # Initiations handed to the authority, by the local index they were given: the source
        # to answer and when it was asked.
        self._awaiting: dict[int, tuple[Endpoint, float]] = {}

    # -- peers ----------------------------------------------------------------------------
    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 endpoint: Endpoint | None = None, keepalive: float | None = None) -> Peer:
        if len(public_key) != KEY_SIZE:
            raise AuraError(f"WireGuard public key must be {KEY_SIZE} bytes, got {len(public_key)}")
        if preshared_key is not None and len(preshared_key) != KEY_SIZE:
            raise AuraError(f"WireGuard preshared key must be {KEY_SIZE} bytes")
        if public_key in self._peers:
            raise AuraError(f"WireGuard peer {public_key.hex()} is already added")
        static_static = None
        if self._static is not None:
            assert self._authority is not None
            self._authority.add_peer(public_key, preshared_key)
            static_static = dh(self._static, public_key)
        elif preshared_key is not None:
            raise AuraError("a device without its private key holds no preshared key")
        peer = Peer(public_key, static_static, preshared_key=preshared_key, endpoint=endpoint,
                    keepalive=keepalive)
        self._peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        if self._authority is not None:
            self._authority.remove_peer(public_key)
        peer = self._peers.pop(public_key, None)
        if peer is not None:
            self._erase_keys(peer)

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    @property
    def peers(self) -> Iterable[Peer]:
        return self._peers.values()

    # -- data path: receive ---------------------------------------------------------------
    def receive(self, datagrams: Sequence[bytes], source: Endpoint, now: float) -> list[Event]:
        """Datagrams from one source; see `receive_batches`."""
        return self.receive_batches(((datagrams, source),), now)

    def receive_batches(self, batches: Iterable[tuple[Sequence[bytes], Endpoint]],
                        now: float) -> list[Event]:
        """Everything a transport has read at once, as (datagrams, source) runs.

        Data is handled at once. Handshake messages are screened at once too, with nothing
        dearer than a keyed hash: mac1, and under load mac2 (else a cookie reply) and the
        per-source rate limit. Those that pass join the handshake queue (at most
        HANDSHAKE_QUEUE_SIZE; more are dropped), whose key exchanges are the dear part:
        HANDSHAKE_WORK_BATCH of them are done now, the rest by `process_handshakes`. The
        queue's length is the load that decides whether a handshake must carry a cookie, and
        the batch bounds what handshakes cost each read, so data keeps moving however many
        arrive, and a flood of them costs a hash each.
        """
        events: list[Event] = []
        queue = self._handshake_queue
        for datagrams, source in batches:
            self._receive_run(datagrams, source, now, events, queue)
        self._work_handshakes(now, events)
        return events

    @property
    def awaiting_authority(self) -> int:
        """Initiations handed out as `HandshakeRequested` and not yet answered."""
        return len(self._awaiting)

    @property
    def handshakes_pending(self) -> int:
        """Handshake messages waiting: call `process_handshakes` soon while there are any."""
        return len(self._handshake_queue)

    def process_handshakes(self, now: float) -> list[Event]:
        """Handles the next HANDSHAKE_WORK_BATCH queued handshake messages."""
        events: list[Event] = []
        self._work_handshakes(now, events)
        return events

    def _work_handshakes(self, now: float, events: list[Event]) -> None:
        queue = self._handshake_queue
        for _ in range(min(len(queue), HANDSHAKE_WORK_BATCH)):
            datagram, source = queue.popleft()
            self._receive_other(datagram, source, now, events)

    def handshakes_shed(self, now: float) -> None:
        """A carrier dropped handshake messages unread (more than it screens per read): the
        device is under load, as when its own queue reaches the mark, so the next ones must
        carry a cookie. Call it before passing on what that read kept."""
        self._load.overflowed(now)

    def shed_first(self, source: Endpoint, now: float) -> bool:
        """Whether a handshake message from `source` is among the first to drop, when a
        carrier reads more than it can screen: a lookup or two, before the message is read.

        True for an endpoint sent a cookie reply within COOKIE_REPLY_INTERVAL (a real
        initiator tries again only REKEY_TIMEOUT later: a flood, or a spoofer, sends so soon)
        and, under load, for a source out of rate-limit tokens (dropped after screening
        anyway). A new client, or one retrying with its cookie, is neither.
        """
        if self._cookie_pacer.answered_recently(source, now):
            return True
        return self._load.lasts(now) and self._rate_limiter.exhausted(source[0], now)

    def _screen_handshake(self, datagram: bytes, source: Endpoint, now: float,
                          events: list[Event], queue: deque[tuple[bytes, Endpoint]]) -> None:
        """Queues a handshake message that passes the checks a flood must not get past cheaply."""
        kind = datagram[0]
        if kind != MESSAGE_COOKIE_REPLY:  # a reply to us is checked by its own AEAD
            if TYPE_WORD.unpack_from(datagram)[0] != kind:
                events.append(Dropped("handshake with nonzero reserved bytes", source))
                return
            mac1_offset = INITIATION_MAC1_OFFSET if kind == MESSAGE_INITIATION \
                else RESPONSE_MAC1_OFFSET
            checker = self._cookie_checker
            if not checker.mac1_valid(datagram, mac1_offset):
                events.append(Dropped("bad mac1", source))
                return
            # Waiting: the queue, initiations the authority has not answered yet, and this one.
            if self._load.under_load(len(queue) + len(self._awaiting) + 1, now):
                if not checker.mac2_valid(datagram, mac1_offset, source, now):
                    if self._cookie_pacer.allow(source, now):
                        sender = TYPE_WORD.unpack_from(datagram, 4)[0]
                        events.append(Transmit(source, [
                            checker.cookie_reply(datagram, mac1_offset, sender, source)]))
                    else:
                        events.append(Dropped("no mac2, and a cookie was sent there just now",
                                              source))
                    return
                if not self._rate_limiter.allow(source[0], now):
                    events.append(Dropped("handshake rate limit", source))
                    return
        if len(queue) < HANDSHAKE_QUEUE_SIZE:
            queue.append((datagram, source))
        else:
            events.append(Dropped("handshake queue full", source))

    def _receive_run(self, datagrams: Sequence[bytes], source: Endpoint, now: float,
                     events: list[Event], handshakes: deque[tuple[bytes, Endpoint]]) -> None:
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
                keypair = keypairs.get(index)
                if type_word != MESSAGE_TRANSPORT or keypair is None:
                    events.append(Dropped("unknown receiver index" if type_word == MESSAGE_TRANSPORT
                                          else "nonzero reserved bytes", source))
                    continue
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
                peer = keypair.peer
                if peer is not run_peer:
                    if run_peer is not None:
                        self._finish_run(run_peer, run_packets, run_bytes, run_has_data, source,
                                         now, events)
                    run_peer, run_packets, run_bytes, run_has_data = peer, [], 0, False
                if keypair is not peer._current:
                    self._confirm_keypair(peer, keypair, source, now, events)
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
                self._finish_run(run_peer, run_packets, run_bytes, run_has_data, source, now,
                                 events)
                run_peer = None
            if size and _HANDSHAKE_SIZES.get(datagram[0]) == size:
                self._screen_handshake(datagram, source, now, events, handshakes)
            else:
                self._receive_other(datagram, source, now, events)
        if run_peer is not None:
            self._finish_run(run_peer, run_packets, run_bytes, run_has_data, source, now, events)

    def _finish_run(self, peer: Peer, packets: list[bytes], size: int, has_data: bool,
                    source: Endpoint, now: float, events: list[Event]) -> None:
        peer.endpoint = source
        peer.rx_bytes += size
        peer._last_received = now
        peer._rehandshake_due = None
        if has_data and peer._keepalive_due is None:
            peer._keepalive_due = now + KEEPALIVE_TIMEOUT
        current = peer._current
        if (current is not None and current.is_initiator and not peer._rekeyed_on_receive
                and now - current.created >= REKEY_ON_RECEIVE_AGE):
            peer._rekeyed_on_receive = True
            self._initiate_unless_pending(peer, now, events)
        if packets:
            events.append(Received(peer, packets))

    def _confirm_keypair(self, peer: Peer, keypair: Keypair, source: Endpoint, now: float,
                         events: list[Event]) -> None:
        """First data on the responder's next keypair: it becomes current; queued data goes."""
        if keypair is not peer._next:
            return
        self._erase_keypair(peer._previous)
        peer._previous, peer._current, peer._next = peer._current, keypair, None
        peer.endpoint = source
        self._handshake_completed(peer, now, events)

    def _handshake_completed(self, peer: Peer, now: float, events: list[Event]) -> None:
        peer.last_handshake = now
        peer._rekeyed_on_receive = False
        peer._session_alive = True
        events.append(HandshakeCompleted(peer))
        if peer._queue:
            queued = list(peer._queue)
            peer._queue.clear()
            self._send_on(peer, queued, now, events)

    # -- data path: send ------------------------------------------------------------------
    def send(self, peer: Peer, packets: Sequence[bytes], now: float) -> list[Event]:
        """Encrypts packets for `peer`; without a usable session they wait for a handshake."""
        events: list[Event] = []
        if self._peers.get(peer.public_key) is not peer:
            events.append(Dropped("peer was removed", peer.endpoint))
        elif packets:
            self._send_on(peer, packets, now, events)
        return events

    def _send_on(self, peer: Peer, packets: Sequence[bytes], now: float,
                 events: list[Event]) -> None:
        keypair = peer._current
        endpoint = peer.endpoint
        sender = keypair.sender if keypair is not None else None
        if (keypair is None or sender is None or endpoint is None
                or now - keypair.created >= REJECT_AFTER_TIME
                or keypair.send_counter + len(packets) >= REJECT_AFTER_MESSAGES):
            peer._queue.extend(packets)
            self._handshake_for_queue(peer, now, events)
            return
        mtu = self.mtu
        pack_header = TRANSPORT_HEADER.pack
        seal = sender.encrypt
        remote_index = keypair.remote_index
        counter = keypair.send_counter
        datagrams = []
        size = 0
        has_data = False
        for packet in packets:
            length = len(packet)
            if length:
                has_data = True
                unit = length % mtu if length > mtu else length
                padding = min((unit + 15) & ~15, mtu) - unit
                if padding:
                    packet = packet + _ZEROS[:padding]
            header = pack_header(MESSAGE_TRANSPORT, remote_index, counter)
            datagram = header + seal(_NONCE_PREFIX + header[8:], packet, None)
            datagrams.append(datagram)
            size += len(datagram)
            counter += 1
        keypair.send_counter = counter
        peer.tx_bytes += size
        peer._last_sent = now
        peer._keepalive_due = None
        if has_data and peer._rehandshake_due is None:
            peer._rehandshake_due = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()
        events.append(Transmit(endpoint, datagrams))
        if counter >= REKEY_AFTER_MESSAGES or (
            keypair.is_initiator and now - keypair.created >= REKEY_AFTER_TIME
        ):
            self._initiate_unless_pending(peer, now, events)

    def _handshake_for_queue(self, peer: Peer, now: float, events: list[Event]) -> None:
        pending = peer._next
        if pending is not None and now - pending.created < REKEY_TIMEOUT:
            return  # we answered an initiation; its first data packet will confirm the keys
        self._initiate_unless_pending(peer, now, events)

    # -- handshakes -----------------------------------------------------------------------
    def initiate(self, peer: Peer, now: float) -> list[Event]:
        """Starts a handshake now (a new attempt period), even if one is pending."""
        events: list[Event] = []
        if self._static is None:
            events.append(Dropped("a device without its private key cannot initiate",
                                  peer.endpoint))
        elif self._peers.get(peer.public_key) is not peer:
            events.append(Dropped("peer was removed", peer.endpoint))
        elif peer.endpoint is None:
            events.append(Dropped("peer has no endpoint to initiate to", None))
        else:
            self._send_initiation(peer, now, events, retry=False)
        return events

    def _initiate_unless_pending(self, peer: Peer, now: float, events: list[Event]) -> None:
        # Without the private key, data waits (bounded) for the peer's own handshake.
        if self._static is not None and peer._handshake is None and peer.endpoint is not None:
            self._send_initiation(peer, now, events, retry=False)

    def _send_initiation(self, peer: Peer, now: float, events: list[Event], *, retry: bool) -> None:
        assert peer.endpoint is not None and peer._static_static is not None
        if peer._handshake is not None:
            self._handshakes.pop(peer._handshake.local_index, None)
        # Wall-clock based so it keeps increasing across restarts; bumped so it also increases
        # between initiations sent within one clock tick.
        timestamp_ns = max(time.time_ns(), peer._last_timestamp_sent_ns + 1)
        peer._last_timestamp_sent_ns = timestamp_ns
        local_index = self._new_index()
        message, state = create_initiation(
            local_static_public=self.public_key,
            responder_initial_hash=peer._initial_hash,
            responder_public=peer.public_key,
            static_static=peer._static_static,
            ephemeral=self._new_ephemeral(),
            timestamp=tai64n(timestamp_ns),
            local_index=local_index,
        )
        peer._handshake = state
        self._handshakes[local_index] = peer
        if not retry:
            peer._handshake_started = now
        peer._handshake_sent = now
        peer._retransmit_at = now + REKEY_TIMEOUT + self._jitter()
        peer._last_sent = now
        peer._keepalive_due = None
        events.append(Transmit(peer.endpoint, [peer._cookies.add_macs(message.pack(), now)]))

    def _receive_other(self, datagram: bytes, source: Endpoint, now: float,
                       events: list[Event]) -> None:
        """A screened handshake message (`_screen_handshake`), or garbage."""
        message_type = TYPE_WORD.unpack_from(datagram)[0] if len(datagram) >= 4 else -1
        try:
            if message_type == MESSAGE_INITIATION:
                self._receive_initiation(datagram, source, now, events)
            elif message_type == MESSAGE_RESPONSE:
                self._receive_response(datagram, source, now, events)
            elif message_type == MESSAGE_COOKIE_REPLY:
                self._receive_cookie_reply(datagram, source, now, events)
            elif message_type == MESSAGE_TRANSPORT:
                events.append(Dropped("data message too short", source))
            else:
                events.append(Dropped("not a WireGuard message", source))
        except MessageError as error:
            events.append(Dropped(str(error), source))
        except HandshakeError as error:
            events.append(Dropped(f"handshake rejected: {error}", source))

    def _receive_initiation(self, datagram: bytes, source: Endpoint, now: float,
                            events: list[Event]) -> None:
        Initiation.unpack(datagram)  # its size, type and reserved bytes
        authority = self._authority
        if authority is None:
            if len(self._awaiting) >= HANDSHAKE_QUEUE_SIZE:
                events.append(Dropped("handshake authority backlog full", source))
                return
            local_index = self._new_index()
            self._awaiting[local_index] = (source, now)
            events.append(HandshakeRequested(datagram, local_index, source))
            return
        local_index = self._new_index()
        answer = authority.answer(datagram, local_index, "", now, time.time())
        self._install_answer(answer, local_index, source, now, events)

    def complete_handshake(self, local_index: int, answer: Answer, now: float) -> list[Event]:
        """The authority's answer to the initiation handed out with `local_index`."""
        events: list[Event] = []
        awaited = self._awaiting.pop(local_index, None)
        if awaited is None:
            events.append(Dropped("handshake answer for no initiation awaiting one", None))
        elif answer.peer_public not in self._peers:
            events.append(Dropped("handshake answer for an unknown peer", awaited[0]))
        else:
            self._install_answer(answer, local_index, awaited[0], now, events)
        return events

    def refuse_handshake(self, local_index: int, reason: str) -> list[Event]:
        """The authority refused the initiation handed out with `local_index`."""
        awaited = self._awaiting.pop(local_index, None)
        return [Dropped(f"handshake rejected: {reason}", awaited[0] if awaited else None)]

    def _install_answer(self, answer: Answer, local_index: int, source: Endpoint, now: float,
                        events: list[Event]) -> None:
        peer = self._peers[answer.peer_public]
        keypair = Keypair(peer, answer.keys, local_index=local_index,
                          remote_index=answer.remote_index, is_initiator=False, created=now)
        keypair.ticket = answer.ticket
        self._erase_keypair(peer._next)
        self._erase_keypair(peer._previous)
        peer._previous = None
        peer._next = keypair
        self._keypairs[local_index] = keypair
        peer._zero_keys_at = now + ZERO_KEYS_AFTER
        peer.endpoint = source
        peer._last_received = peer._last_sent = now
        peer._keepalive_due = None
        events.append(Transmit(source, [peer._cookies.add_macs(answer.response, now)]))

    def _receive_response(self, datagram: bytes, source: Endpoint, now: float,
                          events: list[Event]) -> None:
        message = Response.unpack(datagram)
        peer = self._handshakes.get(message.receiver)
        state = peer._handshake if peer is not None else None
        if peer is None or state is None:
            events.append(Dropped("response to no pending initiation", source))
            return
        assert self._static is not None  # only a device with its private key initiates
        keys = consume_response(message, state, local_static=self._static,
                                preshared_key=peer.preshared_key)
        del self._handshakes[state.local_index]
        peer._handshake = None
        keypair = Keypair(peer, keys, local_index=state.local_index, remote_index=message.sender,
                          is_initiator=True, created=now)
        self._keypairs[state.local_index] = keypair
        self._erase_keypair(peer._previous)
        if peer._next is not None:
            self._erase_keypair(peer._current)
            peer._previous, peer._next = peer._next, None
        else:
            peer._previous = peer._current
        peer._current = keypair
        peer._zero_keys_at = now + ZERO_KEYS_AFTER
        peer.endpoint = source
        peer._last_received = now
        peer._rehandshake_due = None
        if not peer._queue:
            peer._queue.append(b"")  # a keepalive confirms the keys to the responder
        self._handshake_completed(peer, now, events)

    def _receive_cookie_reply(self, datagram: bytes, source: Endpoint, now: float,
                              events: list[Event]) -> None:
        message = CookieReply.unpack(datagram)
        peer = self._handshakes.get(message.receiver)
        if peer is None:
            keypair = self._keypairs.get(message.receiver)
            peer = keypair.peer if keypair is not None else None
        if peer is None:
            events.append(Dropped("cookie reply for unknown index", source))
        elif not peer._cookies.consume_reply(message, now):
            events.append(Dropped("cookie reply did not authenticate", source))

    # -- timers ---------------------------------------------------------------------------
    def tick(self, now: float) -> list[Event]:
        """Retransmissions, keepalives, rekeying, expiry and key erasure due at `now`."""
        events: list[Event] = []
        for peer in list(self._peers.values()):
            if peer._handshake is not None and now >= peer._retransmit_at:
                if (now - peer._handshake_started >= REKEY_ATTEMPT_TIME
                        or peer.endpoint is None):
                    self._give_up_handshake(peer, now, events)
                else:
                    self._send_initiation(peer, now, events, retry=True)
            if peer._rehandshake_due is not None and now >= peer._rehandshake_due:
                # We sent data and heard nothing back: the session may be dead.
                peer._rehandshake_due = None
                self._initiate_unless_pending(peer, now, events)
            if peer._keepalive_due is not None and now >= peer._keepalive_due:
                peer._keepalive_due = None
                if peer.has_session(now):
                    self._send_on(peer, [b""], now, events)
            if (peer.keepalive and peer.endpoint is not None
                    and now - max(peer._last_sent, peer._last_received) >= peer.keepalive):
                self._send_on(peer, [b""], now, events)
            if (self.idle_timeout is not None and peer._session_alive
                    and now - peer._last_received >= self.idle_timeout):
                self._erase_keys(peer)  # its next packet needs a new handshake
            if peer._session_alive and not peer.has_session(now):
                peer._session_alive = False
                events.append(SessionExpired(peer))
            if peer._zero_keys_at is not None and now >= peer._zero_keys_at:
                self._erase_keys(peer)
        for index, (source, asked) in list(self._awaiting.items()):
            if now - asked >= REKEY_TIMEOUT:  # the initiator has retried by now anyway
                del self._awaiting[index]
                events.append(Dropped("handshake authority did not answer", source))
        self._rate_limiter.prune(now)
        self._work_handshakes(now, events)
        return events

    def _give_up_handshake(self, peer: Peer, now: float, events: list[Event]) -> None:
        assert peer._handshake is not None
        self._handshakes.pop(peer._handshake.local_index, None)
        peer._handshake = None
        peer._queue.clear()
        if peer._zero_keys_at is None:
            peer._zero_keys_at = now + ZERO_KEYS_AFTER
        events.append(Dropped("handshake did not complete; queued packets dropped",
                              peer.endpoint))

    # -- helpers --------------------------------------------------------------------------
    def _erase_keypair(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self._keypairs.pop(keypair.local_index, None)
            keypair.erase()

    def _erase_keys(self, peer: Peer) -> None:
        for keypair in (peer._previous, peer._current, peer._next):
            self._erase_keypair(keypair)
        peer._previous = peer._current = peer._next = None
        if peer._handshake is not None:
            self._handshakes.pop(peer._handshake.local_index, None)
            peer._handshake = None
        peer._queue.clear()
        peer._cookies.forget()
        peer._zero_keys_at = None
        peer._keepalive_due = peer._rehandshake_due = None

    def _new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if (index not in self._keypairs and index not in self._handshakes
                    and index not in self._awaiting):
                return index

    def _new_ephemeral(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._rng(KEY_SIZE))

    def _jitter(self) -> float:
        """0 to REKEY_TIMEOUT_JITTER seconds, in whole milliseconds."""
        steps = round(REKEY_TIMEOUT_JITTER * 1000) + 1
        return int.from_bytes(self._rng(2), "little") % steps / 1000
