"""What every server transport shares: the WireGuard session layer and the link to the router.

A transport process is a `Carrier` (UDP socket, TLS streams, QUIC datagrams) plus one
`SessionHub`. The carrier hands every WireGuard message it receives to `SessionHub.received()`
with the outer source address, and sends what the hub asks it to through `Carrier.transmit()`.
The hub runs the I/O-free WireGuard `Device`, keeps the peer list the router pushes, reports
sessions to the router, and moves decrypted packets to and from it in batches.

A transport holds no secret of the server: its device has only the public key. The
initiations it admits go to the router (`hs`, batched per turn of the event loop), which
holds the static and preshared keys, answers them (`hs_done`: response, keys, ticket) and
accepts a `session_up` only with the ticket of a handshake it answered for this transport.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Protocol

from aura_common import ipc
from aura_common.addresses import Endpoint, source_address
from aura_common.config import ServerConfig
from aura_common.ipc.frames import (
    FROM_ROUTER,
    Error,
    HandshakeRequest,
    Handshakes,
    HandshakesDone,
    PeerKey,
    Peers,
    SessionDown,
    SessionUp,
)
from aura_common.pki.keys import load_server_public_key
from aura_common.roles import Transport
from aura_common.service import metrics, systemd
from aura_common.service.log import fields
from aura_common.state import runtime
from aura_common.transport.ports import bind_with_scan
from aura_common.wireguard import (
    Answer,
    Device,
    Dropped,
    Event,
    HandshakeCompleted,
    HandshakeRequested,
    Peer,
    Received,
    SessionExpired,
    Transmit,
)
from aura_common.wireguard.constants import MESSAGE_TRANSPORT
from aura_common.wireguard.noise import TransportKeys

log = logging.getLogger(__name__)

TICK_INTERVAL = 0.25
ROUTER_RETRY_MAX = 2.0
DROP_LOG_INTERVAL = 1.0  # seconds between debug lines about one kind of dropped message


class Carrier(Protocol):
    def transmit(self, destination: Endpoint, datagrams: Sequence[bytes]) -> None:
        """Send WireGuard messages to one remote endpoint; drop them if it is gone."""


def format_endpoint(address: Endpoint) -> str:
    host, port = str(source_address(address[0])), address[1]  # IPv4 as IPv4 on dual stack
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SessionHub:
    def __init__(self, role: str, device: Device, router_socket: str) -> None:
        self.role = role
        self.device = device
        self.router_socket = router_socket
        self.carrier: Carrier | None = None
        # Told the outer address of each completed handshake with a known peer: carriers that
        # hold per-connection state keep it unauthenticated (and bounded) until then.
        self.on_authenticated: Callable[[Endpoint], None] | None = None
        self._router: ipc.Channel | None = None
        self._names: dict[bytes, str] = {}  # public key -> peer name
        self._keys: dict[bytes, bytes] = {}  # public key -> the router's tag of its keys
        self._by_name: dict[str, Peer] = {}
        self._live: set[str] = set()  # peers with a session the router knows of
        self.counters = metrics.TransportCounters()
        self._handshake_work_scheduled = False
        self._requests: list[HandshakeRequest] = []  # for the router, sent once per turn
        self._requests_scheduled = False
        self._drop_logged_at: dict[str, float] = {}  # by metrics.drop_reason() kind
        self._drops_unlogged: Counter[str] = Counter()

    @property
    def session_count(self) -> int:
        return len(self._live)

    @property
    def router_link(self) -> ipc.Channel | None:
        return self._router

    # -- carrier side -------------------------------------------------------------------
    def received(self, datagrams: Sequence[bytes], source: Endpoint) -> None:
        self._handle(self.device.receive(datagrams, source, time.monotonic()))
        self._work_handshakes_soon()

    def received_batches(self, batches: Sequence[tuple[Sequence[bytes], Endpoint]]) -> None:
        """All a carrier read at once, as (datagrams, source) runs."""
        self._handle(self.device.receive_batches(batches, time.monotonic()))
        self._work_handshakes_soon()

    def _work_handshakes_soon(self) -> None:
        """Queued handshakes get the next turn of the event loop, after its pending reads:
        a handshake flood slows handshakes, not data."""
        if self.device.handshakes_pending and not self._handshake_work_scheduled:
            self._handshake_work_scheduled = True
            asyncio.get_running_loop().call_soon(self._work_handshakes)

    def _work_handshakes(self) -> None:
        self._handshake_work_scheduled = False
        self._handle(self.device.process_handshakes(time.monotonic()))
        self._work_handshakes_soon()

    def endpoint_closed(self, source: Endpoint) -> None:
        """A connection (TLS stream, QUIC connection) is gone, and the sessions it carried.

        Nothing can reach those peers any more: they reconnect with a new handshake, on this
        or another transport. Ending the sessions now, rather than at key expiry minutes
        later, shows them disconnected at once and frees a dynamic address.
        """
        for peer in self.device.peers:
            if peer.endpoint == source:
                peer.endpoint = None
                self._session_down(peer)

    def _handle(self, events: list[Event]) -> None:
        carrier, counters = self.carrier, self.counters
        debug = log.isEnabledFor(logging.DEBUG)
        to_router: dict[str, list[bytes]] = {}
        for event in events:
            if type(event) is Received:
                name = self._names.get(event.peer.public_key)
                if name is not None:
                    batch = to_router.get(name)
                    if batch is None:
                        to_router[name] = event.packets
                    else:
                        batch += event.packets
            elif type(event) is Transmit:
                if carrier is not None and event.destination is not None:
                    carrier.transmit(event.destination, event.datagrams)
                kind = event.datagrams[0][0]
                if kind != MESSAGE_TRANSPORT:
                    counters.sent[kind] += 1
            elif type(event) is HandshakeRequested:
                self._ask_router(event)
            elif type(event) is HandshakeCompleted:
                counters.handshakes += 1
                self._session_up(event.peer)
            elif type(event) is SessionExpired:
                self._session_down(event.peer)
            elif type(event) is Dropped:
                counters.drop(event.reason)
                if debug:
                    self._log_drop(event)
        if to_router and self._router is not None:
            # Every peer's packets of this batch in one frame; a full socket drops and counts.
            self._router.send_packets(to_router.items())

    def _ask_router(self, request: HandshakeRequested) -> None:
        """Queue an admitted initiation for the router; all of one turn go in one frame."""
        if self._router is None:
            self._handle(self.device.refuse_handshake(request.local_index,
                                                      "router not connected", False,
                                                      time.monotonic()))
            return
        self._requests.append(HandshakeRequest(request.local_index, request.initiation))
        if not self._requests_scheduled:
            self._requests_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_requests)

    def _send_requests(self) -> None:
        self._requests_scheduled = False
        requests, self._requests = self._requests, []
        router = self._router
        # A full socket drops the batch, as it would packets: the router is behind, and the
        # initiators retry.
        if router is None or not router.send(Handshakes(requests)):
            for request in requests:
                self._handle(self.device.refuse_handshake(request.local_index,
                                                          "router link full or down", False,
                                                          time.monotonic()))

    def _router_answered(self, frame: HandshakesDone) -> None:
        now = time.monotonic()
        device = self.device
        for a in frame.answers:
            answer = Answer(a.peer_public_key, a.response,
                            TransportKeys(send=a.sending_key, receive=a.receiving_key),
                            a.initiator_index, a.ticket)
            self._handle(device.complete_handshake(a.local_index, answer, now))
        for refusal in frame.refused:
            self._handle(device.refuse_handshake(refusal.local_index, refusal.reason,
                                                 refusal.unauthenticated, now))
        self._work_handshakes_soon()  # answers make room for initiations still waiting

    def _log_drop(self, event: Dropped) -> None:
        """One debug line per kind of drop and second: the sender decides how many there are."""
        kind = metrics.drop_reason(event.reason)
        now = time.monotonic()
        if now - self._drop_logged_at.get(kind, -DROP_LOG_INTERVAL) < DROP_LOG_INTERVAL:
            self._drops_unlogged[kind] += 1
            return
        self._drop_logged_at[kind] = now
        unlogged = self._drops_unlogged.pop(kind, 0)
        log.debug("dropped from %s: %s%s", event.source, event.reason,
                  f" (and {unlogged} more like it since the last line)" if unlogged else "")

    def _session_up(self, peer: Peer) -> None:
        if peer.endpoint is not None and self.on_authenticated is not None:
            self.on_authenticated(peer.endpoint)
        name = self._names.get(peer.public_key)
        if name is None:
            return
        endpoint = format_endpoint(peer.endpoint) if peer.endpoint else ""
        first = name not in self._live
        self._live.add(name)
        log.log(
            logging.INFO if first else logging.DEBUG,
            "handshake with %s from %s", name, endpoint,
            extra=fields(peer=name, transport=self.role, endpoint=endpoint),
        )
        self._tell_router(SessionUp(name, endpoint, time.time(), peer.session_ticket))

    def _session_down(self, peer: Peer) -> None:
        name = self._names.get(peer.public_key)
        if name is None or name not in self._live:
            return
        self._live.discard(name)
        log.info("session with %s ended", name, extra=fields(peer=name, transport=self.role))
        self._tell_router(SessionDown(name))

    def _tell_router(self, frame: SessionUp | SessionDown) -> None:
        # A broken link is noticed (and re-established) by the router link loop.
        if self._router is not None:
            self._router.post(frame)

    # -- router side --------------------------------------------------------------------
    def _apply_peers(self, peers: list[PeerKey]) -> None:
        wanted = {p.public_key: p for p in peers}
        for key in list(self._names):
            if key not in wanted or self._changed(key, wanted[key]):
                name = self._names.pop(key)
                del self._keys[key]
                peer = self._by_name.pop(name, None)
                self.device.remove_peer(key)
                if name in self._live:
                    self._live.discard(name)
                    # Revoked, disabled, past its expiry or quota, or given a new preshared
                    # key: the router decides.
                    log.info("peer %s withdrawn: session closed", name,
                             extra=fields(peer=name, transport=self.role))
                    self._tell_router(SessionDown(name))
                del peer
        for key, entry in wanted.items():
            if key not in self._names:
                peer = self.device.add_peer(key)
                self._names[key] = entry.name
                self._keys[key] = entry.keys
                self._by_name[entry.name] = peer

    def _changed(self, key: bytes, entry: PeerKey) -> bool:
        return (self.device.peer(key) is None or self._names[key] != entry.name
                or self._keys[key] != entry.keys)

    def _from_router(self, batches: list[tuple[str, list[bytes]]]) -> None:
        """Encrypt every peer's packets of a frame, then handle all the events at once (a
        frame may carry a packet for each of a thousand peers)."""
        now, events = time.monotonic(), []
        for name, packets in batches:
            peer = self._by_name.get(name)
            if peer is not None and peer.endpoint is not None:
                events += self.device.send(peer, packets, now)
        self._handle(events)

    async def run(self) -> None:
        """Keep the router link up and the timers ticking, forever."""
        ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        try:
            await self._router_link_forever()
        finally:
            ticker.cancel()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self._handle(self.device.tick(time.monotonic()))

    async def _router_link_forever(self) -> None:
        delay = 0.1
        announced_down = False
        while True:
            try:
                channel = await ipc.connect(self.router_socket, self.role, FROM_ROUTER)
            except (OSError, ipc.ChannelClosed) as error:
                if not announced_down:
                    log.warning("router not reachable at %s (%s); retrying",
                                self.router_socket, error)
                    announced_down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, ROUTER_RETRY_MAX)
                continue
            delay, announced_down = 0.1, False
            channel.on_packets = self._from_router
            log.info("connected to the router")
            self._router = channel
            try:
                await self._serve_router(channel)
            except ipc.ChannelClosed:
                log.warning("router connection lost; live sessions are kept and re-registered")
            finally:
                self._router = None
                channel.close()

    async def _serve_router(self, channel: ipc.Channel) -> None:
        first_peers = True
        while True:
            for frame in await channel.recv_many():
                if isinstance(frame, HandshakesDone):
                    self._router_answered(frame)
                elif isinstance(frame, Peers):
                    self._apply_peers(frame.peers)
                    if first_peers:
                        first_peers = False
                        await self._reregister(channel)
                elif isinstance(frame, Error):
                    log.error("router refused us: %s", frame.message)
                    raise ipc.ChannelClosed(frame.message)

    async def _reregister(self, channel: ipc.Channel) -> None:
        """After (re)connecting, tell the router about sessions that survived its restart."""
        for name in sorted(self._live):
            peer = self._by_name.get(name)
            if peer is None or peer.endpoint is None:
                continue
            await channel.send_reliable(SessionUp(
                name, format_endpoint(peer.endpoint),
                time.time() - (time.monotonic() - (peer.last_handshake or 0)),
                peer.session_ticket,
            ))


# -- what every transport process does around its carrier ---------------------------------
def disabled(config: ServerConfig, role: str) -> bool:
    """True (after saying so) when `role` is switched off, e.g. socket-activated anyway."""
    if config.transports.listener(Transport(role)).enabled:
        return False
    log.info("the %s transport is disabled in %s", role, config.path)
    runtime.forget(config.transports_dir, role)
    systemd.ready("disabled")
    return True


def listening_socket(
    config: ServerConfig, role: str, sock_type: int, *, skip: frozenset[int] = frozenset()
) -> tuple[socket.socket, bool]:
    """The socket systemd passed for `role`, or one we bind, scanning for a free port.

    Returns the non-blocking socket and whether it came from socket activation.
    """
    activated = systemd.listen_fds().get(role)
    if activated:
        sock, from_systemd = activated[0], True
    else:
        settings = config.transports.listener(Transport(role))
        sock = bind_with_scan(settings.listen, settings.port, sock_type, skip=skip)
        from_systemd = False
    sock.setblocking(False)
    return sock, from_systemd


def new_hub(config: ServerConfig, role: str) -> SessionHub:
    # A dynamic address is held only while the peer talks: an idle session ends, and with
    # it the lease (the router releases it on session_down).
    network = config.network
    idle = network.lease_idle_timeout if network.strategy == "dynamic" else None
    device = Device(public_key=load_server_public_key(config), mtu=config.tun.mtu,
                    idle_timeout=idle)
    return SessionHub(role, device, config.router_socket)


async def serve_sessions(
    config: ServerConfig, hub: SessionHub, sock: socket.socket, activated: bool, detail: str = ""
) -> None:
    """Record where the transport listens, report ready, and keep its sessions until stopped."""
    address = format_endpoint(sock.getsockname()[:2])
    runtime.record_bound(config.transports_dir, hub.role, [address], activated)
    how = " (socket activation)" if activated else ""
    log.info("listening on %s %s%s%s", hub.role, address, how, f"; {detail}" if detail else "",
             extra=fields(transport=hub.role))
    exporter = await metrics.serve(config, hub.role, metrics.TransportCollector(hub))
    systemd.ready(f"listening on {hub.role} {address}")
    try:
        await hub.run()
    finally:
        runtime.forget(config.transports_dir, hub.role)
        if exporter is not None:
            exporter.close()
