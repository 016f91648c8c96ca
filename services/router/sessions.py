"""Who is connected where: the router's table from tunnel address to transport session.

Pure bookkeeping, no I/O: the router driver feeds it session reports and packets and sends
what it returns. Addresses are kept packed (4 or 16 bytes) because the hot path compares them
against raw IP headers.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Link = TypeVar("Link")  # the transport connection a session lives on


@dataclass(eq=False, slots=True)  # a thousand live sessions: no dict each
class Session(Generic[Link]):
    peer: str
    link: Link
    transport: str
    endpoint: str
    addresses: tuple[bytes, ...]
    handshake_at: float
    connected_at: float = field(default_factory=time.time)
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    accounted_bytes: int = 0  # rx + tx already added to the peer's usage
    ticket_issued: float = 0.0  # of the newest handshake claimed for it (Unix time)

    def unaccounted(self) -> int:
        """Bytes moved since the last call, for the peer's usage (client limits)."""
        total = self.rx_bytes + self.tx_bytes
        fresh, self.accounted_bytes = total - self.accounted_bytes, total
        return fresh


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address.split("/")[0]).packed


def source_of(packet: bytes) -> bytes:
    version = packet[0] >> 4
    if version == 4:
        return packet[12:16]
    if version == 6:
        return packet[8:24]
    return b""


def destination_of(packet: bytes) -> bytes:
    version = packet[0] >> 4
    if version == 4:
        return packet[16:20]
    if version == 6:
        return packet[24:40]
    return b""


class SessionTable(Generic[Link]):
    def __init__(self) -> None:
        self._by_peer: dict[str, Session[Link]] = {}
        self._by_address: dict[bytes, Session[Link]] = {}
        self.unroutable = 0
        self.spoofed = 0

    def __iter__(self) -> Iterator[Session[Link]]:
        return iter(self._by_peer.values())

    def get(self, peer: str) -> Session[Link] | None:
        return self._by_peer.get(peer)

    def up(
        self, peer: str, link: Link, transport: str, endpoint: str, addresses: Iterable[str],
        handshake_at: float,
    ) -> tuple[Session[Link], bool]:
        """Record a session (new, re-registered, or moved to another transport).

        Returns the session and whether it is new to this link (so a welcome is due).
        """
        current = self._by_peer.get(peer)
        packed_addresses = tuple(packed(a) for a in addresses)
        if current is not None and current.link is link:
            current.endpoint = endpoint or current.endpoint
            current.handshake_at = handshake_at
            if current.addresses != packed_addresses:
                self._unroute(current)
                current.addresses = packed_addresses
                self._route(current)
            return current, False
        session: Session[Link] = Session(
            peer, link, transport, endpoint, packed_addresses, handshake_at
        )
        if current is not None:  # the client moved to another transport: keep its counters
            self._unroute(current)
            session.rx_packets, session.rx_bytes = current.rx_packets, current.rx_bytes
            session.tx_packets, session.tx_bytes = current.tx_packets, current.tx_bytes
            session.accounted_bytes = current.accounted_bytes
            session.connected_at = current.connected_at
        self._by_peer[peer] = session
        self._route(session)
        return session, True

    def down(self, peer: str, link: Link | None = None) -> Session[Link] | None:
        """Forget a peer's session; with `link`, only if the session still lives there."""
        session = self._by_peer.get(peer)
        if session is None or (link is not None and session.link is not link):
            return None
        del self._by_peer[peer]
        self._unroute(session)
        return session

    def drop_link(self, link: Link) -> list[Session[Link]]:
        gone = [s for s in self._by_peer.values() if s.link is link]
        for session in gone:
            self.down(session.peer)
        return gone

    def _route(self, session: Session[Link]) -> None:
        for address in session.addresses:
            self._by_address[address] = session

    def _unroute(self, session: Session[Link]) -> None:
        for address in session.addresses:
            if self._by_address.get(address) is session:
                del self._by_address[address]

    # -- data path ----------------------------------------------------------------------
    def by_link(self, packets: Sequence[bytes]) -> dict[Link, list[bytes]]:
        """Packets read from the TUN grouped by the link of the session that owns their
        destination (where they will queue); the others are counted unroutable."""
        batches: dict[Link, list[bytes]] = {}
        by_address = self._by_address
        for packet in packets:
            session = by_address.get(destination_of(packet))
            if session is None:
                self.unroutable += 1
                continue
            batch = batches.get(session.link)
            if batch is None:
                batches[session.link] = [packet]
            else:
                batch.append(packet)
        return batches

    def dispatch(self, packets: Sequence[bytes]) -> dict[Session[Link], list[bytes]]:
        """Group packets read from the TUN by the session that owns their destination."""
        batches: dict[Session[Link], list[bytes]] = {}
        by_address = self._by_address
        for packet in packets:
            session = by_address.get(destination_of(packet))
            if session is None:
                self.unroutable += 1
                continue
            batch = batches.get(session)
            if batch is None:
                batches[session] = [packet]
            else:
                batch.append(packet)
        for session, batch in batches.items():
            session.tx_packets += len(batch)
            session.tx_bytes += sum(map(len, batch))
        return batches

    def accept(self, peer: str, link: Link, packets: Sequence[bytes]) -> list[bytes]:
        """Keep the packets a peer may send: IP packets from one of its own addresses."""
        session = self._by_peer.get(peer)
        if session is None or session.link is not link:
            self.spoofed += len(packets)
            return []
        allowed = session.addresses
        accepted = [p for p in packets if p and source_of(p) in allowed]
        self.spoofed += len(packets) - len(accepted)
        session.rx_packets += len(accepted)
        session.rx_bytes += sum(map(len, accepted))
        return accepted
