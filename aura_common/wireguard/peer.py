"""A remote peer: its key slots, pending handshake, staged packets, timers and counters.

The peer changes its own state; the device, the handshake side and the data paths call its
methods. Its local indices live in the device's `IndexTable`: the handshake side registers
them, and the peer gives back (`forget`) each one whose keys or handshake it drops.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..addresses import Endpoint
from .constants import REJECT_AFTER_TIME, REKEY_TIMEOUT
from .cookie import CookieJar
from .crypto import tai64n
from .keypair import Keypair
from .limits import MAX_QUEUED_PACKETS
from .messages import CookieReply
from .noise import InitiatorState, create_initiation, initial_hash_for
from .timers import Timers


class Peer:
    """A remote WireGuard peer and its session state.

    Public attributes are the driver's view; the data paths also count bytes and move the
    endpoint and `timers`. `current` (the keys data is sent on) is changed only by the peer's
    methods.
    """

    __slots__ = (
        "_cookies",
        "_forget",
        "_handshake",
        "_initial_hash",
        "_last_timestamp_ns",
        "_next",
        "_previous",
        "_session_alive",
        "_staged",
        "_static_static",
        "context",
        "current",
        "endpoint",
        "keepalive",
        "last_handshake",
        "preshared_key",
        "public_key",
        "rx_bytes",
        "timers",
        "tx_bytes",
    )

    def __init__(self, public_key: bytes, static_static: bytes | None, *,
                 preshared_key: bytes | None, endpoint: Endpoint | None,
                 keepalive: float | None, forget: Callable[[int], None],
                 jitter: Callable[[], float]) -> None:
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.keepalive = keepalive
        self.last_handshake: float | None = None
        self.context: object = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.current: Keypair | None = None
        self.timers = Timers(jitter)
        self._previous: Keypair | None = None
        self._next: Keypair | None = None
        self._handshake: InitiatorState | None = None
        self._staged: deque[bytes] = deque(maxlen=MAX_QUEUED_PACKETS)
        self._static_static = static_static
        self._initial_hash = initial_hash_for(public_key)
        self._cookies = CookieJar(public_key)
        self._forget = forget
        self._last_timestamp_ns = 0
        self._session_alive = False

    def __repr__(self) -> str:
        return f"Peer({self.public_key.hex()[:8]}…, endpoint={self.endpoint})"

    def has_session(self, now: float) -> bool:
        """Whether the peer holds keys that may still carry data."""
        return any(
            keypair is not None and keypair.receiver is not None
            and now - keypair.created < REJECT_AFTER_TIME
            for keypair in (self.current, self._next)
        )

    @property
    def session_ticket(self) -> bytes:
        """The authority's ticket for the handshake of the current keys (b"" if none)."""
        return self.current.ticket if self.current is not None else b""

    # -- handshakes -----------------------------------------------------------------------
    @property
    def handshake(self) -> InitiatorState | None:
        """Our initiation awaiting its response, if any."""
        return self._handshake

    def answered_recently(self, now: float) -> bool:
        """Whether we answered an initiation less than REKEY_TIMEOUT ago and wait for the
        first data on its keys (which confirms them)."""
        return self._next is not None and now - self._next.created < REKEY_TIMEOUT

    def create_initiation(self, *, local_public: bytes, ephemeral: X25519PrivateKey,
                          wall_ns: int, local_index: int, now: float, retry: bool) -> bytes:
        """A new initiation (with macs) replacing any pending one; `retry` keeps the attempt
        period going."""
        assert self._static_static is not None  # only a device with its private key initiates
        if self._handshake is not None:
            self._forget(self._handshake.local_index)
        # Wall-clock based so it keeps increasing across restarts; bumped so it also increases
        # between initiations sent within one clock tick.
        timestamp_ns = max(wall_ns, self._last_timestamp_ns + 1)
        self._last_timestamp_ns = timestamp_ns
        message, self._handshake = create_initiation(
            local_static_public=local_public,
            responder_initial_hash=self._initial_hash,
            responder_public=self.public_key,
            static_static=self._static_static,
            ephemeral=ephemeral,
            timestamp=tai64n(timestamp_ns),
            local_index=local_index,
        )
        self.timers.handshake_initiated(now, retry=retry)
        return self._cookies.add_macs(message.pack(), now)

    def abandon_handshake(self, now: float) -> None:
        """The attempt period ended without a response: staged packets go too."""
        assert self._handshake is not None
        self._forget(self._handshake.local_index)
        self._handshake = None
        self._staged.clear()
        self.timers.handshake_abandoned(now)

    def add_macs(self, message: bytes, now: float) -> bytes:
        return self._cookies.add_macs(message, now)

    def consume_cookie_reply(self, reply: CookieReply, now: float) -> bool:
        return self._cookies.consume_reply(reply, now)

    # -- key slots ------------------------------------------------------------------------
    def answered(self, keypair: Keypair, source: Endpoint, now: float) -> None:
        """We answered an initiation: its keys wait as `next` until data on them arrives."""
        self._erase(self._next)
        self._erase(self._previous)
        self._previous = None
        self._next = keypair
        self.timers.keys_derived(now)
        self.endpoint = source
        self.timers.initiation_answered(now)

    def confirm(self, keypair: Keypair, source: Endpoint) -> bool:
        """Data arrived on `keypair` from `source`: if it is `next`, it becomes current (True)."""
        if keypair is not self._next:
            return False
        self._erase(self._previous)
        self._previous, self.current, self._next = self.current, keypair, None
        self._retire_previous()
        self.endpoint = source
        return True

    def response_accepted(self, keypair: Keypair, source: Endpoint, now: float) -> None:
        """Our initiation was answered: its keys are current at once, and a keepalive (if no
        data is staged) confirms them to the responder."""
        assert self._handshake is not None
        self._forget(self._handshake.local_index)
        self._handshake = None
        self._erase(self._previous)
        if self._next is not None:
            self._erase(self.current)
            self._previous, self._next = self._next, None
        else:
            self._previous = self.current
        self._retire_previous()
        self.current = keypair
        self.timers.keys_derived(now)
        self.endpoint = source
        self.timers.received(now, False, None)
        if not self._staged:
            self._staged.append(b"")

    def handshake_completed(self, now: float) -> list[bytes]:
        """Records the new session; returns the staged packets, to be sent on its keys."""
        self.last_handshake = now
        self.timers.handshake_completed()
        self._session_alive = True
        staged = list(self._staged)
        self._staged.clear()
        return staged

    def stage(self, packets: Sequence[bytes]) -> None:
        """Packets wait (the oldest drop beyond MAX_QUEUED_PACKETS) for a session."""
        self._staged.extend(packets)

    def session_ended(self, now: float, idle_timeout: float | None) -> bool:
        """Erases the keys of a session idle for `idle_timeout`; True once when the peer has
        lost its last usable keys."""
        if (idle_timeout is not None and self._session_alive
                and now - self.timers.last_received >= idle_timeout):
            self.erase_keys()  # its next packet needs a new handshake
        if self._session_alive and not self.has_session(now):
            self._session_alive = False
            return True
        return False

    def erase_keys(self) -> None:
        """Drops every key, the pending handshake, staged packets and the stored cookie."""
        for keypair in (self._previous, self.current, self._next):
            self._erase(keypair)
        self._previous = self.current = self._next = None
        if self._handshake is not None:
            self._forget(self._handshake.local_index)
            self._handshake = None
        self._staged.clear()
        self._cookies.forget()
        self.timers.keys_erased()

    def _retire_previous(self) -> None:
        if self._previous is not None:
            self._previous.retire()

    def _erase(self, keypair: Keypair | None) -> None:
        if keypair is not None:
            self._forget(keypair.local_index)
            keypair.erase()
