"""The WireGuard device: peers, sessions, timers. Datagrams and time in, events out; no I/O.

A device built with the static private key answers (and makes) handshakes itself. One built
with only the public key (a server transport) holds no secret: it admits initiations (mac1,
cookies and rate limit under load) and hands them out as `HandshakeRequested`; the
`HandshakeAuthority` that holds the keys answers, and `complete_handshake` installs the
answer. Such a device never initiates: its peers (clients) rekey by themselves.

The device ties the parts together, as wireguard-go's device/ does: `peer` (a peer's keys,
handshake and staged packets), `timers` (when to retransmit, keep alive, rekey and erase),
`indextable` (what the index a message carries names), `send` and `receive` (the data path)
`screen` (what a handshake message must pass before its key exchange) and `handshake` (the
messages that pass, and our initiations).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..addresses import Endpoint
from ..errors import AuraError
from .authority import Answer, HandshakeAuthority
from .constants import KEY_SIZE, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER
from .crypto import dh
from .events import Dropped, Event, HandshakeCompleted, SessionExpired
from .handshake import Handshakes
from .indextable import IndexTable
from .limits import AUTHORITY_WINDOW, DEFAULT_MTU, HANDSHAKE_WORK_BATCH, UNDER_LOAD_BACKLOG
from .peer import Peer
from .receive import Receiver
from .screen import HandshakeScreen
from .send import SENT, STAGED, send

# Timer jitter is drawn from the random source this many values at a time: a timer is armed
# for nearly every data packet sent (`Timers.sent`), and one call to the source each time
# (a getrandom system call with os.urandom) cost more than the rest of the timer update.
JITTER_DRAW = 256
_JITTER_STEPS = round(REKEY_TIMEOUT_JITTER * 1000) + 1


class Device:
    """One local static key and the peers allowed to talk to it.

    Give `private_key`, or only `public_key` for a device whose handshakes a
    `HandshakeAuthority` elsewhere answers (see the module's docstring). `now` arguments are a
    monotonic clock in seconds; `wall_ns` is the Unix clock in nanoseconds that initiation
    timestamps and the authority's tickets are taken from.
    """

    def __init__(self, private_key: bytes | None = None, *, public_key: bytes | None = None,
                 rng: Callable[[int], bytes] = os.urandom,
                 wall_ns: Callable[[], int] = time.time_ns,
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
        self._jitters: list[float] = []
        self._peers: dict[bytes, Peer] = {}
        self._index = IndexTable(rng)
        self._screen = HandshakeScreen(public_key, rng, under_load_after, self._index)
        self._handshakes = Handshakes(public_key, self._static, self._authority, self._peers,
                                      self._index, rng=rng, wall_ns=wall_ns,
                                      completed=self._handshake_completed,
                                      unauthenticated=self._screen.unauthenticated)
        self._receiver = Receiver(self._index, other=self._handshakes.receive,
                                  confirmed=self._handshake_completed,
                                  rekey=self._handshakes.initiate_unless_pending)

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
                    keepalive=keepalive, forget=self._index.forget, jitter=self._jitter)
        self._peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        if self._authority is not None:
            self._authority.remove_peer(public_key)
        peer = self._peers.pop(public_key, None)
        if peer is not None:
            peer.erase_keys()

    def peer(self, public_key: bytes) -> Peer | None:
        return self._peers.get(public_key)

    @property
    def peers(self) -> Iterable[Peer]:
        return self._peers.values()

    # -- data path ------------------------------------------------------------------------
    def receive(self, datagrams: Sequence[bytes], source: Endpoint, now: float) -> list[Event]:
        """Datagrams from one source; see `receive_batches`."""
        return self.receive_batches(((datagrams, source),), now)

    def receive_batches(self, batches: Iterable[tuple[Sequence[bytes], Endpoint]],
                        now: float) -> list[Event]:
        """Everything a transport has read at once, as (datagrams, source) runs.

        Data is handled first, from every run. Handshake messages are screened after it, with
        nothing dearer than a keyed hash: mac1, and under load mac2 (else a cookie reply) and
        the per-source rate limit. Those that pass join the handshake queue (at most
        HANDSHAKE_QUEUE_SIZE, new sources first: backlog.py), whose key exchanges are the dear part:
        HANDSHAKE_WORK_BATCH of them are done now, the rest by `process_handshakes`. The
        queue's length is the load that decides whether a handshake must carry a cookie, and
        the batch bounds what handshakes cost each read, so data keeps moving however many
        arrive, and a flood of them costs a hash each.
        """
        events: list[Event] = []
        handshakes: list[tuple[bytes, Endpoint]] = []
        run = self._receiver.run
        for datagrams, source in batches:
            run(datagrams, source, now, events, handshakes)
        screen = self._screen.screen
        for datagram, source in handshakes:
            screen(datagram, source, now, events)
        self._work_handshakes(now, events)
        return events

    def send(self, peer: Peer, packets: Sequence[bytes], now: float) -> list[Event]:
        """Encrypts packets for `peer`; without a usable session they wait for a handshake."""
        events: list[Event] = []
        if self._peers.get(peer.public_key) is not peer:
            events.append(Dropped("peer was removed", peer.endpoint))
        elif packets:
            wanted = send(peer, packets, now, self.mtu, events)
            if wanted != SENT:
                self._handshake_wanted(peer, wanted, now, events)
        return events

    def _send(self, peer: Peer, packets: Sequence[bytes], now: float,
              events: list[Event]) -> None:
        wanted = send(peer, packets, now, self.mtu, events)
        if wanted != SENT:
            self._handshake_wanted(peer, wanted, now, events)

    def _handshake_wanted(self, peer: Peer, wanted: int, now: float,
                          events: list[Event]) -> None:
        """After `send` returned STAGED or REKEY."""
        if wanted == STAGED and peer.answered_recently(now):
            return  # we answered an initiation; its first data packet will confirm the keys
        self._handshakes.initiate_unless_pending(peer, now, events)

    # -- screening ------------------------------------------------------------------------
    @property
    def awaiting_authority(self) -> int:
        """Initiations handed out as `HandshakeRequested` and not yet answered."""
        return self._index.awaiting

    @property
    def handshakes_pending(self) -> int:
        """Handshake messages waiting that can be worked now: call `process_handshakes` soon
        while there are any. Not while AUTHORITY_WINDOW initiations await their answers: the
        rest wait here, where new sources go first (backlog.py), not in the authority's
        FIFO; each answer makes room for one more."""
        if self._authority is None and self._index.awaiting >= AUTHORITY_WINDOW:
            return 0
        return len(self._screen.queue)

    def process_handshakes(self, now: float) -> list[Event]:
        """Handles the next HANDSHAKE_WORK_BATCH queued handshake messages."""
        events: list[Event] = []
        self._work_handshakes(now, events)
        return events

    def handshakes_shed(self, now: float) -> None:
        """A carrier dropped handshake messages unread (more than it screens per read): the
        device is under load, as when its own queue reaches the mark, so the next ones must
        carry a cookie. Call it before passing on what that read kept."""
        self._screen.shed(now)

    def shed_first(self, source: Endpoint, now: float) -> bool:
        """Whether a handshake message from `source` is among the first to drop, when a
        carrier reads more than it can screen: a lookup or two, before the message is read.

        True for an endpoint sent a cookie reply within COOKIE_REPLY_INTERVAL (a real
        initiator tries again only REKEY_TIMEOUT later: a flood, or a spoofer, sends so soon)
        and, under load, for a source out of rate-limit tokens or held (its initiation did not
        authenticate), or while the handshake queue is full for one that had a message queued
        lately (dropped after screening anyway). A new client, or one retrying with its cookie,
        is none of these.
        """
        return self._screen.shed_first(source, now)

    def handshakes_admissible(self, source: Endpoint, now: float) -> int:
        """How many handshake messages from `source` could pass screening now: under load,
        the rate-limit tokens of its source (none while it is held for an initiation that did
        not authenticate); otherwise HANDSHAKE_QUEUE_SIZE. A carrier that reads many at once
        need not keep more, each to have its macs checked only to be dropped."""
        return self._screen.admissible(source, now)

    def goes_first(self, source: Endpoint, now: float) -> bool:
        """Whether a handshake message from `source` would go ahead of the queue: its source
        (IPv4 address, IPv6 /64) has had no message queued for FRESH_AFTER. A new client, or
        one retrying with its cookie, is; a flood source that is let through is not (backlog.py).
        A carrier keeps such messages before others when a read holds more than it screens."""
        return self._screen.goes_first(source, now)

    def _work_handshakes(self, now: float, events: list[Event]) -> None:
        queue = self._screen.queue
        work = min(len(queue), HANDSHAKE_WORK_BATCH)
        if self._authority is None:
            work = min(work, AUTHORITY_WINDOW - self._index.awaiting)
        for _ in range(work):
            datagram, source, proven = queue.pop()
            self._handshakes.receive(datagram, source, now, events, proven)

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
            self._handshakes.initiate(peer, now, events, retry=False)
        return events

    def complete_handshake(self, local_index: int, answer: Answer, now: float) -> list[Event]:
        """The authority's answer to the initiation handed out with `local_index`."""
        events: list[Event] = []
        self._handshakes.complete(local_index, answer, now, events)
        return events

    def refuse_handshake(self, local_index: int, reason: str, unauthenticated: bool,
                         now: float) -> list[Event]:
        """The authority refused the initiation handed out with `local_index`: it did not
        authenticate (`unauthenticated`), or it was a replay, came too soon or found no room."""
        events: list[Event] = []
        self._handshakes.refuse(local_index, reason, unauthenticated, now, events)
        return events

    def _handshake_completed(self, peer: Peer, now: float, events: list[Event]) -> None:
        staged = peer.handshake_completed(now)
        events.append(HandshakeCompleted(peer))
        if staged:
            self._send(peer, staged, now, events)

    # -- timers ---------------------------------------------------------------------------
    def tick(self, now: float) -> list[Event]:
        """Retransmissions, keepalives, rekeying, expiry and key erasure due at `now` (see
        `timers` for what each is for)."""
        events: list[Event] = []
        idle_timeout = self.idle_timeout
        for peer in list(self._peers.values()):
            timers = peer.timers
            if peer.handshake is not None and now >= timers.retransmit_at:
                if now - timers.handshake_started >= REKEY_ATTEMPT_TIME or peer.endpoint is None:
                    peer.abandon_handshake(now)
                    events.append(Dropped("handshake did not complete; queued packets dropped",
                                          peer.endpoint))
                else:
                    self._handshakes.initiate(peer, now, events, retry=True)
            if timers.rehandshake_due is not None and now >= timers.rehandshake_due:
                # We sent data and heard nothing back: the session may be dead.
                timers.rehandshake_due = None
                self._handshakes.initiate_unless_pending(peer, now, events)
            if timers.keepalive_due is not None and now >= timers.keepalive_due:
                timers.keepalive_due = None
                if peer.has_session(now):
                    self._send(peer, [b""], now, events)
            if (peer.keepalive and peer.endpoint is not None
                    and now - max(timers.last_sent, timers.last_received) >= peer.keepalive):
                self._send(peer, [b""], now, events)
            if peer.session_ended(now, idle_timeout):
                events.append(SessionExpired(peer))
            if timers.zero_keys_at is not None and now >= timers.zero_keys_at:
                peer.erase_keys()
        for source in self._index.unanswered(now, REKEY_TIMEOUT):
            # The initiator has retried by now anyway.
            events.append(Dropped("handshake authority did not answer", source))
        self._screen.rate_limiter.prune(now)
        self._work_handshakes(now, events)
        return events

    def _jitter(self) -> float:
        """0 to REKEY_TIMEOUT_JITTER seconds, in whole milliseconds."""
        jitters = self._jitters
        if not jitters:
            drawn = self._rng(2 * JITTER_DRAW)
            jitters += (int.from_bytes(drawn[i:i + 2], "little") % _JITTER_STEPS / 1000
                        for i in range(0, len(drawn), 2))
        return jitters.pop()
