"""Local indices: the receiver index every message to us carries, and what it names.

An index names the keys of a session (data messages and cookie replies carry it), our
initiation awaiting its response (responses and cookie replies), or an initiation handed to
the handshake authority and not answered yet. Indices are random, so a message cannot be aimed
at a session by guessing the next one, and one value is never in use twice.
"""

from __future__ import annotations

from collections.abc import Callable

from ..addresses import Endpoint
from .keypair import Keypair
from .peer import Peer


class IndexTable:
    __slots__ = ("_awaiting", "_handshakes", "_rng", "keypairs")

    def __init__(self, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        # Read directly, per data message, by the receive path.
        self.keypairs: dict[int, tuple[Keypair, Peer]] = {}
        self._handshakes: dict[int, Peer] = {}
        # Initiations handed to the authority: the source to answer, when it was asked and
        # whether a mac2 proved that source.
        self._awaiting: dict[int, tuple[Endpoint, float, bool]] = {}

    def new_index(self) -> int:
        while True:
            index = int.from_bytes(self._rng(4), "little")
            if (index not in self.keypairs and index not in self._handshakes
                    and index not in self._awaiting):
                return index

    def add_keypair(self, keypair: Keypair, peer: Peer) -> None:
        self.keypairs[keypair.local_index] = (keypair, peer)

    def add_handshake(self, index: int, peer: Peer) -> None:
        self._handshakes[index] = peer

    def forget(self, index: int) -> None:
        """The keys or the initiation `index` named are gone."""
        self.keypairs.pop(index, None)
        self._handshakes.pop(index, None)

    def initiator(self, index: int) -> Peer | None:
        """The peer whose initiation `index` names (for its response)."""
        return self._handshakes.get(index)

    def addressee(self, index: int) -> Peer | None:
        """The peer a cookie reply to `index` is for: an initiation's, or a session's."""
        peer = self._handshakes.get(index)
        if peer is None:
            entry = self.keypairs.get(index)
            peer = entry[1] if entry is not None else None
        return peer

    # -- initiations the authority answers ------------------------------------------------
    @property
    def awaiting(self) -> int:
        return len(self._awaiting)

    def await_answer(self, source: Endpoint, now: float, proven: bool) -> int:
        """A new index for an initiation handed to the authority at `now`."""
        index = self.new_index()
        self._awaiting[index] = (source, now, proven)
        return index

    def proven(self, index: int) -> bool:
        """Whether a mac2 proved the source of the initiation `index` names, awaiting."""
        awaited = self._awaiting.get(index)
        return awaited is not None and awaited[2]

    def answered(self, index: int) -> Endpoint | None:
        """The source of the initiation `index` names, which waits no more (None: none)."""
        awaited = self._awaiting.pop(index, None)
        return awaited[0] if awaited is not None else None

    def unanswered(self, now: float, timeout: float) -> list[Endpoint]:
        """Forgets the initiations asked `timeout` or more ago; their sources."""
        late = [index for index, (_, asked, _) in self._awaiting.items()
                if now - asked >= timeout]
        return [self._awaiting.pop(index)[0] for index in late]
