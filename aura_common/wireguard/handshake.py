"""Handshake messages: the initiations we send, and the initiations, responses and cookie
replies we get once they are screened.

An initiation is answered by a `HandshakeAuthority`: in-process for a device with its private
key, or elsewhere for one without (it hands the initiation out as `HandshakeRequested` and
installs the answer given to `complete`). Only a device with its private key initiates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..addresses import Endpoint
from .authority import Answer, HandshakeAuthority, Replayed
from .constants import (
    KEY_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
)
from .events import Dropped, Event, HandshakeRequested, Transmit
from .indextable import IndexTable
from .keypair import Keypair
from .limits import HANDSHAKE_QUEUE_SIZE
from .messages import TYPE_WORD, CookieReply, Initiation, MessageError, Response
from .noise import HandshakeError, consume_response
from .peer import Peer


class Handshakes:
    """`completed(peer, now, events)` is called when our initiation is answered (a responder's
    keys are confirmed later, by data, on the receive path); `unauthenticated(source, now)` when
    an initiation whose source a mac2 proved did not authenticate."""

    __slots__ = ("_authority", "_completed", "_index", "_peers", "_public_key",
                 "_rng", "_static", "_unauthenticated", "_wall_ns")

    def __init__(self, public_key: bytes, static: X25519PrivateKey | None,
                 authority: HandshakeAuthority | None, peers: Mapping[bytes, Peer],
                 index: IndexTable, *, rng: Callable[[int], bytes], wall_ns: Callable[[], int],
                 completed: Callable[[Peer, float, list[Event]], None],
                 unauthenticated: Callable[[Endpoint, float], None]) -> None:
        self._public_key = public_key
        self._static = static
        self._authority = authority
        self._peers = peers
        self._index = index
        self._rng = rng
        self._wall_ns = wall_ns
        self._completed = completed
        self._unauthenticated = unauthenticated

    # -- ours -----------------------------------------------------------------------------
    def initiate(self, peer: Peer, now: float, events: list[Event], *, retry: bool) -> None:
        """Sends a new initiation to the peer's endpoint (which it must have)."""
        assert peer.endpoint is not None
        local_index = self._index.new_index()
        message = peer.create_initiation(
            local_public=self._public_key,
            ephemeral=X25519PrivateKey.from_private_bytes(self._rng(KEY_SIZE)),
            wall_ns=self._wall_ns(),
            local_index=local_index,
            now=now,
            retry=retry,
        )
        self._index.add_handshake(local_index, peer)
        events.append(Transmit(peer.endpoint, [message]))

    def initiate_unless_pending(self, peer: Peer, now: float, events: list[Event]) -> None:
        # Without the private key, data waits (bounded) for the peer's own handshake.
        if self._static is not None and peer.handshake is None and peer.endpoint is not None:
            self.initiate(peer, now, events, retry=False)

    # -- theirs ---------------------------------------------------------------------------
    def receive(self, datagram: bytes, source: Endpoint, now: float,
                events: list[Event], proven: bool = False) -> None:
        """A screened handshake message (`proven`: it carried a valid mac2), or garbage."""
        message_type = TYPE_WORD.unpack_from(datagram)[0] if len(datagram) >= 4 else -1
        try:
            if message_type == MESSAGE_INITIATION:
                self._receive_initiation(datagram, source, now, events, proven)
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
            if proven and message_type == MESSAGE_INITIATION and not isinstance(error, Replayed):
                self._unauthenticated(source, now)

    def complete(self, local_index: int, answer: Answer, now: float,
                 events: list[Event]) -> None:
        """The authority's answer to the initiation handed out with `local_index`."""
        source = self._index.answered(local_index)
        if source is None:
            events.append(Dropped("handshake answer for no initiation awaiting one", None))
        elif answer.peer_public not in self._peers:
            events.append(Dropped("handshake answer for an unknown peer", source))
        else:
            self._install_answer(answer, local_index, source, now, events)

    def refuse(self, local_index: int, reason: str, unauthenticated: bool, now: float,
               events: list[Event]) -> None:
        """The authority refused the initiation handed out with `local_index` (see
        `Device.refuse_handshake`)."""
        proven = self._index.proven(local_index)
        source = self._index.answered(local_index)
        events.append(Dropped(f"handshake rejected: {reason}", source))
        if source is not None and proven and unauthenticated:
            self._unauthenticated(source, now)

    def _receive_initiation(self, datagram: bytes, source: Endpoint, now: float,
                            events: list[Event], proven: bool) -> None:
        Initiation.unpack(datagram)  # its size, type and reserved bytes
        authority = self._authority
        if authority is None:
            if self._index.awaiting >= HANDSHAKE_QUEUE_SIZE:
                events.append(Dropped("handshake authority backlog full", source))
                return
            local_index = self._index.await_answer(source, now, proven)
            events.append(HandshakeRequested(datagram, local_index, source))
            return
        local_index = self._index.new_index()
        answer = authority.answer(datagram, local_index, "", now, self._wall_ns() / 1e9)
        self._install_answer(answer, local_index, source, now, events)

    def _install_answer(self, answer: Answer, local_index: int, source: Endpoint, now: float,
                        events: list[Event]) -> None:
        peer = self._peers[answer.peer_public]
        keypair = Keypair(answer.keys, local_index=local_index, remote_index=answer.remote_index,
                          is_initiator=False, created=now)
        keypair.ticket = answer.ticket
        peer.answered(keypair, source, now)
        self._index.add_keypair(keypair, peer)
        events.append(Transmit(source, [peer.add_macs(answer.response, now)]))

    def _receive_response(self, datagram: bytes, source: Endpoint, now: float,
                          events: list[Event]) -> None:
        message = Response.unpack(datagram)
        peer = self._index.initiator(message.receiver)
        state = peer.handshake if peer is not None else None
        if peer is None or state is None:
            events.append(Dropped("response to no pending initiation", source))
            return
        assert self._static is not None  # only a device with its private key initiates
        keys = consume_response(message, state, local_static=self._static,
                                preshared_key=peer.preshared_key)
        keypair = Keypair(keys, local_index=state.local_index, remote_index=message.sender,
                          is_initiator=True, created=now)
        peer.response_accepted(keypair, source, now)
        self._index.add_keypair(keypair, peer)
        self._completed(peer, now, events)

    def _receive_cookie_reply(self, datagram: bytes, source: Endpoint, now: float,
                              events: list[Event]) -> None:
        message = CookieReply.unpack(datagram)
        peer = self._index.addressee(message.receiver)
        if peer is None:
            events.append(Dropped("cookie reply for unknown index", source))
        elif not peer.consume_cookie_reply(message, now):
            events.append(Dropped("cookie reply did not authenticate", source))
