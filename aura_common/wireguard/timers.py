"""A peer's timers: when to retransmit, keep alive, rekey, expire and erase keys.

Theory of operation
-------------------
The kernel module and wireguard-go arm a real timer per purpose and run its handler when it
fires. The core owns no clock, so here each peer holds deadlines on the driver's monotonic
clock instead: the events of the data and handshake paths move them (the methods below, named
after the whitepaper's section 6 and wireguard-go's timers.go), and `Device.tick(now)` acts on
those that have passed. A deadline of None is a timer that is not armed.

- A handshake initiation is sent: retransmit it after REKEY_TIMEOUT (+ jitter, so peers that
  lost the same packet do not retry in step) until REKEY_ATTEMPT_TIME after the first attempt;
  then give up, drop the staged packets and let the keys be erased.
- Data is sent: if nothing authenticated arrives back within KEEPALIVE_TIMEOUT +
  REKEY_TIMEOUT, the session may be dead: start a handshake.
- Data is received: if we send nothing within KEEPALIVE_TIMEOUT, send a keepalive, so the
  peer's "data sent" timer above does not fire for a session that works.
- Anything authenticated is sent or received: the pending keepalive, or the suspicion of a
  dead session, is settled.
- Keys are derived: all of them are erased ZERO_KEYS_AFTER later unless new ones come first.
- A session is up as initiator and data arrives when its keys are REKEY_ON_RECEIVE_AGE old:
  rekey once, before the responder (who never initiates a rekey) has to drop them.
- Persistent keepalive (the peer's `keepalive`) and the device's `idle_timeout` are measured
  from the last packet sent and received.
"""

from __future__ import annotations

from collections.abc import Callable

from .constants import KEEPALIVE_TIMEOUT, REKEY_ON_RECEIVE_AGE, REKEY_TIMEOUT, ZERO_KEYS_AFTER
from .keypair import Keypair

NEVER = float("-inf")


class Timers:
    """One peer's deadlines and the times they are measured from (seconds, monotonic)."""

    __slots__ = (
        "handshake_started",
        "jitter",
        "keepalive_due",
        "last_received",
        "last_sent",
        "rehandshake_due",
        "rekeyed_on_receive",
        "retransmit_at",
        "zero_keys_at",
    )

    def __init__(self, jitter: Callable[[], float]) -> None:
        self.jitter = jitter  # 0 to REKEY_TIMEOUT_JITTER seconds, fresh on each call
        self.handshake_started = NEVER
        self.retransmit_at = NEVER
        self.last_sent = NEVER
        self.last_received = NEVER
        self.keepalive_due: float | None = None
        self.rehandshake_due: float | None = None
        self.zero_keys_at: float | None = None
        self.rekeyed_on_receive = False

    def handshake_initiated(self, now: float, *, retry: bool) -> None:
        if not retry:
            self.handshake_started = now
        self.retransmit_at = now + REKEY_TIMEOUT + self.jitter()
        self.sent(now, False)

    def sent(self, now: float, data: bool) -> None:
        """An authenticated message went out; `data`: one that was not a keepalive."""
        self.last_sent = now
        self.keepalive_due = None
        if data and self.rehandshake_due is None:
            self.rehandshake_due = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter()

    def initiation_answered(self, now: float) -> None:
        self.last_received = now
        self.sent(now, False)

    def received(self, now: float, data: bool, current: Keypair | None) -> bool:
        """Authenticated messages came in (`data`: not only keepalives) while `current` are
        the peer's keys; True when that makes the one rekey on receive due."""
        self.last_received = now
        self.rehandshake_due = None
        if data and self.keepalive_due is None:
            self.keepalive_due = now + KEEPALIVE_TIMEOUT
        if (current is not None and current.is_initiator and not self.rekeyed_on_receive
                and now - current.created >= REKEY_ON_RECEIVE_AGE):
            self.rekeyed_on_receive = True
            return True
        return False

    def keys_derived(self, now: float) -> None:
        self.zero_keys_at = now + ZERO_KEYS_AFTER

    def handshake_completed(self) -> None:
        self.rekeyed_on_receive = False

    def handshake_abandoned(self, now: float) -> None:
        if self.zero_keys_at is None:
            self.zero_keys_at = now + ZERO_KEYS_AFTER

    def keys_erased(self) -> None:
        self.zero_keys_at = self.keepalive_due = self.rehandshake_due = None
