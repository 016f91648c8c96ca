"""aura-router: the TUN device, the peer authority, and dispatch between TUN and transports.

The router alone holds the server's static key and the peers' preshared keys: it answers
the handshakes the transports forward (`hs`), each to the transport that carried it, and
takes a `session_up` only with the ticket of a handshake it answered for that transport.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aura_common import ipc
from aura_common.cluster.presence import LiveSession
from aura_common.config import ServerConfig
from aura_common.errors import AuraError, ConfigError
from aura_common.ipc.accounts import ADMIN, Accounts
from aura_common.ipc.frames import (
    TO_ROUTER,
    DroppedPackets,
    Error,
    HandshakeAnswer,
    HandshakeCounts,
    HandshakeRefusal,
    HandshakeRequest,
    Handshakes,
    HandshakesDone,
    ManifestPushed,
    ManifestUpdated,
    Packets,
    PeerKey,
    Peers,
    PeerState,
    Reload,
    Reloaded,
    RouterStatus,
    SessionDown,
    SessionUp,
    Status,
    TransportState,
)
from aura_common.netio import link
from aura_common.netio.fq import FlowQueues
from aura_common.netio.tun import QUEUE_PACKETS, Tun
from aura_common.pki import ca
from aura_common.pki.keys import load_server_private_key
from aura_common.pki.manifest import ManifestError, SignedManifest, parse_body, verify
from aura_common.roles import Transport, is_transport
from aura_common.service import metrics, systemd
from aura_common.service.log import NOTICE, fields
from aura_common.service.shell import run_service
from aura_common.state import runtime
from aura_common.state.client_limits import SAVE_INTERVAL, Gate, Usage
from aura_common.state.pool import AddressPool, Leases
from aura_common.state.registry import RegisteredPeer, Registry
from aura_common.wire import control
from aura_common.wireguard import HandshakeAuthority
from aura_common.wireguard.authority import Replayed
from aura_common.wireguard.messages import MessageError
from aura_common.wireguard.noise import HandshakeError
from services.router import nat, replay
from services.router.sessions import Session, SessionTable
from services.router.timeshare import TimeShare

if TYPE_CHECKING:
    from services.router.feed import DatabaseFeed

log = logging.getLogger("aura-router")

SERVED_ROLES = (*Transport, ADMIN)
# A transport that sends frames for sessions it does not hold is warned about at most this
# often (a peer moving between transports causes a few legitimately).
MISDIRECTED_WARN_INTERVAL = 10.0
# One turn reads as much of the TUN as one turn of a transport's frames may write into it
# (the IPC channel reads 256 KiB a turn: thousands of small packets, each answered by the
# kernel at once into a queue that drops what it cannot hold): a full queue of small
# packets, or 64 of the largest (TSO) reads.
TUN_READ_LIMIT = QUEUE_PACKETS
TUN_READ_BYTES = 64 * (64 << 10)
# What the TUN gave waits in a flow queue (`netio.fq`), not in the device's ring: each turn of
# the event loop dispatches at most TURN_BYTES of it, sparse flows first, so a ping or an
# acknowledgement towards a client waits for one turn of a bulk download, not for its whole
# backlog; CoDel and a byte limit sized to a few milliseconds at the rate it drains bound
# the backlog.
TURN_BYTES = 256 << 10
# The queue is kept per transport link, and a link gets more only while its transport has
# less than LINK_BYTES of it unread (the kernel's count, frame overhead included): what the
# link holds is a FIFO a ping reply cannot overtake, so the backlog waits in the flow queue
# instead. A link over it is looked at again on the router's next TUN read or packets from a
# transport, or after LINK_POLL if none comes first, twice as long each time nothing could be
# sent (up to LINK_POLL_LIMIT: a transport that stopped reading costs a few wakeups a second).
LINK_BYTES = TURN_BYTES
LINK_POLL = 0.0005
LINK_POLL_LIMIT = 0.05
LIMITS_INTERVAL = 0.25  # a peer past its quota or expiry is cut off within this (plus IPC)
# How often leases a busy lock kept in memory are written again.
LEASE_FLUSH_INTERVAL = 2.0
# Handshakes forwarded by one transport wait in a queue of at most this many (more are
# refused at once and counted). One turn of the event loop answers them for at most
# HANDSHAKE_TURN_SECONDS in all (up to four X25519 operations each, 0.1 to 0.3 ms), shared
# by the transports waiting, so TUN reads and packets from the transports are never more
# than a millisecond apart and a handshake flood leaves the data path most of the router.
# The transport counts unanswered ones as its load and asks for cookies when they pile up.
HANDSHAKE_QUEUE = 256
HANDSHAKE_TURN_SECONDS = 0.0005
# While packets have moved in the last HANDSHAKE_DATA_RECENT seconds, handshake work gets at
# most HANDSHAKE_SHARE of the loop's time (timeshare.py), saved up to HANDSHAKE_SHARE_BURST:
# a flood of initiations that pass every check then slows handshakes, not the tunnels (a
# tenth of a core still answers several hundred a second, while each client needs one every
# two minutes). With no data moving, handshakes may use all of it.
HANDSHAKE_SHARE = 0.1
HANDSHAKE_SHARE_BURST = 0.002
HANDSHAKE_DATA_RECENT = 0.02


def _keys(peer: RegisteredPeer | None) -> tuple[bytes, bytes] | None:
    """What a peer's handshakes are made with; no preshared key is the all-zero one."""
    return None if peer is None else (peer.public_key, peer.preshared_key or bytes(32))


def serial_of(signed: SignedManifest | None) -> int:
    """The serial a manifest claims (0 for none); its signature is checked where it enters."""
    if signed is None:
        return 0
    try:
        return parse_body(signed.body).serial
    except ManifestError:
        return 0


class Router:
    def __init__(self, config: ServerConfig, authority: HandshakeAuthority) -> None:
        self.config = config
        self.started = time.time()
        self.feed: DatabaseFeed | None = None
        if config.registry is None:
            self.registry = Registry.load(config.peers_file)
            self.usage = Usage.load(config.usage_file)
        else:
            from services.router.feed import DatabaseFeed, SharedUsage  # psycopg for a cluster

            usage = SharedUsage(config.usage_file, Usage.load(config.usage_file).totals())
            self.usage = usage
            self.feed = DatabaseFeed(config, usage, lambda: self.registry, self.apply_registry,
                                     self._addresses_in_use)
            self.registry = self.feed.initial()
        self.leases = Leases(config.leases_file,
                             AddressPool(config.network.ipv4, config.network.ipv6))
        self.sessions: SessionTable[ipc.Channel] = SessionTable()
        self.transports: dict[ipc.Channel, str] = {}
        self._warned_at: dict[tuple[ipc.Channel, str], float] = {}  # by link and kind
        self.tun: Tun | None = None
        self.queue: FlowQueues[ipc.Channel] = FlowQueues()  # read from the TUN, not yet sent
        self._dispatching = False  # a turn of `_dispatch_turn` is scheduled
        self._held: asyncio.TimerHandle | None = None  # the next look at links without room
        self._held_for = LINK_POLL  # after how long
        self.manifest: SignedManifest | None = None
        self.gate = Gate()
        self.refused_since: dict[str, float] = {}  # when the gate refused each peer (Unix time)
        self.authority = authority  # the server's static key and the preshared keys
        self.replay_file = os.path.join(config.router_dir, "handshake-timestamps.json")
        try:
            authority.restore_replay_state(replay.load(self.replay_file))
        except AuraError as error:
            log.warning("%s; initiations answered before this start may be replayed once", error)
        self._handshakes: dict[ipc.Channel, deque[HandshakeRequest]] = {}
        self._handshakes_scheduled = False
        self._handshake_share = TimeShare(HANDSHAKE_SHARE, HANDSHAKE_SHARE_BURST,
                                          HANDSHAKE_DATA_RECENT)
        self.handshakes_answered = 0
        self.handshakes_refused = 0  # did not authenticate, replayed, or peer may not connect
        self.handshakes_dropped = 0  # over a transport's queue, or its link closed first
        self.check_limits()
        self._authorize_peers()

    # -- start and stop -----------------------------------------------------------------
    async def open_tun(self) -> None:
        config = self.config
        addresses = [f"{config.server_address_v4}/{config.network.ipv4.prefixlen}"]
        if config.network.ipv6 is not None:
            addresses.append(f"{config.server_address_v6}/{config.network.ipv6.prefixlen}")
        self.tun = Tun.open(config.tun.name, mtu=config.tun.mtu)
        # pyroute2's synchronous API runs its own event loop: keep it off ours.
        await asyncio.to_thread(link.configure, config.tun.name, addresses, config.tun.mtu)
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [config.network.ipv4]
        if config.network.ipv6 is not None:
            networks.append(config.network.ipv6)
        nat.install(config.tun.name, networks, config.network.uplink)
        asyncio.get_running_loop().add_reader(self.tun.fileno(), self._tun_readable)
        log.info("tunnel %s up with %s, mtu %d", config.tun.name, ", ".join(addresses),
                 config.tun.mtu)

    def close(self) -> None:
        self._account_usage()
        self._save_usage()
        self._save_replay_state()
        if self.tun is not None:
            asyncio.get_running_loop().remove_reader(self.tun.fileno())
            self.tun.close()
            self.tun = None
        nat.remove(self.config.tun.name)

    # -- registry -----------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the registry: the file, or everything from a cluster's database."""
        if self.feed is not None:
            self.feed.refresh()
            return
        self.apply_registry(Registry.load(self.config.peers_file))

    def apply_registry(self, registry: Registry) -> None:
        """Serve `registry` from now on: sessions of peers no longer allowed end at once, and
        so do those of peers with a new public or preshared key (the operator replaced a key
        that leaked: the session made with it must not outlive it). The peers frame tells
        the transports, which drop those peers' session keys."""
        previous, self.registry = self.registry, registry
        self.usage.retain(peer.name for peer in self.registry)
        self.check_limits(push=False)
        allowed = {peer.name for peer in self.registry if self._may_connect(peer)}
        for session in list(self.sessions):
            if session.peer not in allowed:
                self._end_session(session.peer, None, "revoked")
            elif _keys(previous.get(session.peer)) != _keys(registry.get(session.peer)):
                self._end_session(session.peer, None, "its keys changed")
        self._push_peers()
        log.info("peer registry loaded: %d peers", len(self.registry))

    def _may_connect(self, peer: RegisteredPeer) -> bool:
        return peer.enabled and peer.name not in self.gate.refused

    def _peers_frame(self) -> Peers:
        """The peers transports accept handshakes from: not those revoked, disabled or limited.

        A peer left out loses its sessions on every transport at once, and so does one whose
        `keys` tag changed. Public keys only: the preshared keys stay here, with the authority.
        """
        return Peers([PeerKey(p.name, p.public_key, self.authority.keys_tag(p.public_key))
                      for p in self.registry if self._may_connect(p)])

    def _authorize_peers(self) -> None:
        """The authority answers exactly the peers that may connect now."""
        unusable = self.authority.set_peers({
            p.public_key: p.preshared_key for p in self.registry if self._may_connect(p)
        })
        for public in unusable:
            log.warning("peer key %s in %s is unusable; its handshakes are refused",
                        public.hex(), self.config.peers_file)

    def _push_peers(self) -> None:
        self._authorize_peers()
        for channel in self.transports:
            channel.post(self._peers_frame())

    # -- client limits ------------------------------------------------------------------
    def _account_usage(self) -> None:
        for session in self.sessions:
            self.usage.add(session.peer, session.unaccounted())

    def check_limits(self, push: bool = True) -> None:
        """Count usage, refuse peers past their expiry or quota, let edited ones back in."""
        self._account_usage()
        now = time.time()
        newly, lifted = self.gate.review((p for p in self.registry if p.limited), self.usage, now)
        for name, why in newly.items():
            self.refused_since[name] = now
            log.log(NOTICE, "%s refused: %s", name, why, extra=fields(peer=name))
            self._end_session(name, None, why)
        for name in lifted:
            del self.refused_since[name]
            if name in self.registry:
                log.info("%s may connect again", name, extra=fields(peer=name))
        # A crossing is saved at once so a crash cannot let the peer back in.
        if newly or self.usage.save_due(time.monotonic()):
            self._save_usage()
        if push and (newly or lifted):
            self._push_peers()
        if self.authority.replay_state_changed:
            self._save_replay_state()

    def _save_replay_state(self) -> None:
        try:
            replay.save(self.replay_file, self.authority.replay_state(),
                        (peer.public_key for peer in self.registry))
        except (OSError, AuraError) as error:
            log.error("cannot save handshake timestamps to %s: %s", self.replay_file, error)

    def _save_usage(self) -> None:
        try:
            self.usage.save(time.monotonic())
        except (OSError, AuraError) as error:
            log.error("cannot save client usage to %s: %s; retrying in %.0f s",
                      self.usage.path, error, SAVE_INTERVAL)

    async def check_limits_forever(self) -> None:
        while True:
            await asyncio.sleep(LIMITS_INTERVAL)
            self.check_limits()

    def _addresses_for(self, peer: RegisteredPeer) -> list[str]:
        """A provisioned address is sticky; without one (dynamic pool) lease one for now."""
        if peer.address_v4 or self.config.network.strategy == "static":
            return peer.addresses
        within = None if self.feed is None else self.feed.lease_indices()
        v4, v6 = self.leases.lease(peer.name, self.registry.taken_addresses(), within)
        return [str(a) for a in (v4, v6) if a is not None]

    def _addresses_in_use(self) -> set[str]:
        return {*self.leases.taken(), *self.registry.taken_addresses()}

    def load_manifest(self) -> None:
        """The signer's manifest file, unless the cluster already gave us a newer one."""
        try:
            stored = SignedManifest.load(self.config.manifest_file)  # the signer's account's
        except AuraError as error:
            log.warning("cannot read the bridge manifest %s: %s", self.config.manifest_file, error)
            return
        if serial_of(stored) >= serial_of(self.manifest):
            self.manifest = stored

    def _welcome(self, session: Session[ipc.Channel], addresses: list[str]) -> None:
        """Tell an Aura client its address, DNS, routes and the latest manifest, in-tunnel."""
        network = self.config.network
        payload = control.encode_control(control.ControlMessage(
            address=tuple(ipaddress.ip_interface(a) for a in addresses),
            dns=tuple(ipaddress.ip_address(a) for a in network.dns),
            routes=tuple(n for n in (network.ipv4, network.ipv6) if n is not None),
            manifest=self.manifest,
        ))
        session.link.post(Packets(time.monotonic(), [(session.peer, [payload])]))

    def adopt_manifest(self, signed: SignedManifest) -> None:
        """A manifest another member of the cluster published: pushed if it is newer and
        verifies against our CA (it came through the database)."""
        try:
            manifest = verify(signed, ca.load_ca_public_key(self.config.key_dir), now=None)
        except (ManifestError, ConfigError) as error:
            log.warning("ignoring a bridge manifest from the cluster: %s", error)
            return
        if manifest.serial > serial_of(self.manifest):
            self.manifest = signed
            log.info("bridge manifest serial %d from the cluster", manifest.serial)
            self._push_manifest()

    def push_manifest(self) -> None:
        self.load_manifest()
        self._push_manifest()

    def _push_manifest(self) -> None:
        for session in self.sessions:
            peer = self.registry.get(session.peer)
            if peer is not None:
                self._welcome(session, self._addresses_for(peer))
        log.info("bridge manifest pushed to %d connected clients", len(list(self.sessions)))

    # -- transports ---------------------------------------------------------------------
    async def on_channel(self, channel: ipc.Channel) -> None:
        if is_transport(channel.role):
            await self._serve_transport(channel)
        elif channel.role == ADMIN:
            await self._serve_admin(channel)

    async def _serve_transport(self, channel: ipc.Channel) -> None:
        role = channel.role
        self.transports[channel] = role
        channel.on_packets = functools.partial(self._from_transport, channel)
        log.info("transport %s connected", role, extra=fields(transport=role))
        await channel.send_reliable(self._peers_frame())
        try:
            while True:
                frame = await channel.recv()
                if isinstance(frame, Handshakes):
                    self._handshakes_from(channel, frame.items)
                elif isinstance(frame, SessionUp):
                    self._session_up(channel, frame)
                elif isinstance(frame, SessionDown):
                    self._end_session(frame.peer, channel, "ended")
        except ipc.ChannelClosed:
            log.warning("transport %s disconnected", role, extra=fields(transport=role))
        finally:
            del self.transports[channel]
            for kind in ("session", "packets"):
                self._warned_at.pop((channel, kind), None)
            self.handshakes_dropped += len(self._handshakes.pop(channel, ()))
            self.queue.close(channel)
            for session in self.sessions.drop_link(channel):
                self.usage.add(session.peer, session.unaccounted())
                self._release(session.peer)

    # -- handshakes ---------------------------------------------------------------------
    def _handshakes_from(self, channel: ipc.Channel, items: list[HandshakeRequest]) -> None:
        queue = self._handshakes.setdefault(channel, deque())
        room = HANDSHAKE_QUEUE - len(queue)
        queue.extend(items[:room])
        if len(items) > room:
            overflow = items[room:]
            self.handshakes_dropped += len(overflow)
            channel.post(HandshakesDone([], [
                HandshakeRefusal(item.local_index, "router handshake queue full", False)
                for item in overflow]))
        self._schedule_handshakes(0.0)

    def _schedule_handshakes(self, delay: float) -> None:
        if not self._handshakes_scheduled:
            self._handshakes_scheduled = True
            asyncio.get_running_loop().call_later(delay, self._answer_handshakes)

    def _answer_handshakes(self) -> None:
        """Each transport's queue for its share of HANDSHAKE_TURN_SECONDS (one at least), or
        of the time the data path leaves them (`_handshake_share`); the rest in a later turn."""
        self._handshakes_scheduled = False
        now, wall = time.monotonic(), time.time()
        allowance = self._handshake_share.allowance(now)
        if allowance <= 0:
            self._schedule_handshakes(self._handshake_share.wait(now))
            return
        authority = self.authority
        share = min(HANDSHAKE_TURN_SECONDS, allowance) / len(self._handshakes)
        for channel, queue in list(self._handshakes.items()):
            role = self.transports.get(channel)
            answers, refused = [], []
            until = time.monotonic() + share
            while queue:
                request = queue.popleft()
                index = request.local_index
                try:
                    answer = authority.answer(request.initiation, index, role or "", now, wall)
                except (HandshakeError, MessageError) as error:
                    refused.append(HandshakeRefusal(index, str(error),
                                                    not isinstance(error, Replayed)))
                else:
                    answers.append(HandshakeAnswer(
                        index, answer.peer_public, answer.response, answer.keys.send,
                        answer.keys.receive, answer.remote_index, answer.ticket))
                if time.monotonic() >= until:
                    break
            self.handshakes_answered += len(answers)
            self.handshakes_refused += len(refused)
            if not queue:
                del self._handshakes[channel]
            if role is not None:
                channel.post(HandshakesDone(answers, refused))
        finished = time.monotonic()
        self._handshake_share.spent(finished - now, finished)
        if self._handshakes:
            self._schedule_handshakes(0.0)

    def _session_up(self, channel: ipc.Channel, frame: SessionUp) -> None:
        name, endpoint = frame.peer, frame.endpoint
        peer = self.registry.get(name)
        if peer is None or not self._may_connect(peer):
            return  # the transport learns from the next peers frame
        role = self.transports.get(channel, "?")
        if not self.authority.ticket_valid(frame.ticket, role, peer.public_key, time.time()):
            self._misdirected(channel, "session", f"session_up for {name} without the ticket "
                              "of a handshake the router answered for it")
            return
        issued = self.authority.ticket_issued(frame.ticket)
        current = self.sessions.get(name)
        if current is not None and current.link is not channel and \
                issued <= current.ticket_issued:
            # A transport keeps its tickets after the peer moved on: one of them must not
            # pull the peer's traffic back to a transport it has left.
            self._misdirected(channel, "session", f"session_up for {name} with a ticket "
                              f"older than its session over {current.transport}")
            return
        try:
            addresses = self._addresses_for(peer)
        except AuraError as error:
            log.error("no address for %s: %s", name, error, extra=fields(peer=name))
            return
        session, new = self.sessions.up(
            name, channel, role, endpoint, addresses, frame.handshake_at
        )
        session.ticket_issued = max(session.ticket_issued, issued)
        if new:
            log.info("%s connected over %s from %s as %s", name, role, endpoint,
                     ", ".join(addresses),
                     extra=fields(peer=name, transport=role, endpoint=endpoint))
        # After every handshake, not only for a new session: a client that restarted while
        # its old session lived on here (UDP has no goodbye) needs address, DNS and manifest.
        self._welcome(session, addresses)

    def _end_session(self, name: str, channel: ipc.Channel | None, why: str) -> None:
        session = self.sessions.down(name, channel)
        if session is not None:
            self.usage.add(name, session.unaccounted())
            self._release(name)
            log.info("%s disconnected (%s)", name, why,
                     extra=fields(peer=name, transport=session.transport))

    def _release(self, name: str) -> None:
        if self.config.network.strategy == "dynamic":
            self.leases.release(name)

    def _from_transport(self, channel: ipc.Channel,
                        batches: list[tuple[str, list[bytes]]]) -> None:
        self._handshake_share.data_moved(time.monotonic())
        accepted: list[bytes] = []
        for peer, packets in batches:
            allowed = self.sessions.accept(peer, channel, packets)
            if len(allowed) < len(packets):
                self._refused(channel, peer)
            accepted += allowed
        if accepted and self.tun is not None:
            self.tun.write_batch(accepted)
        if self._held is not None:  # a transport at work may have read its link meanwhile
            self._dispatch_turn()

    def _refused(self, channel: ipc.Channel, peer: str) -> None:
        session = self.sessions.get(peer)
        if session is None or session.link is not channel:
            # Packets in flight when the router withdrew the peer are expected, not news.
            known = self.registry.get(peer)
            if known is not None and self._may_connect(known):
                self._misdirected(channel, "packets",
                                  f"packets for {peer!r}, which has no session there")
        else:
            self._misdirected(channel, "packets", f"packets from {peer} with a source "
                              "address that is not the peer's")

    def _misdirected(self, channel: ipc.Channel, kind: str, what: str) -> None:
        """Warn (rate-limited per transport and kind) about frames the router refused."""
        now = time.monotonic()
        last = self._warned_at.get((channel, kind))
        if last is not None and now - last < MISDIRECTED_WARN_INTERVAL:
            return
        self._warned_at[channel, kind] = now
        role = self.transports.get(channel, "?")
        log.warning("transport %s (pid %d) sent %s; dropped", role, channel.peer_credentials.pid,
                    what, extra=fields(transport=role))

    def _tun_readable(self) -> None:
        assert self.tun is not None
        packets = self.tun.read_batch(TUN_READ_LIMIT, TUN_READ_BYTES)
        now = time.monotonic()
        if packets:
            self._handshake_share.data_moved(now)
        for channel, batch in self.sessions.by_link(packets).items():
            self.queue.of(channel).push(batch, now)
        if not self._dispatching:
            self._dispatch_turn()

    def _dispatch_turn(self) -> None:
        """Up to TURN_BYTES of each link's queue, as far as the link has room."""
        self._dispatching = False
        if self._held is not None:
            self._held.cancel()
            self._held = None
        now = time.monotonic()
        more = held = served = False
        for outlet, queue in self.queue.queues.items():
            if not queue:
                continue
            room = LINK_BYTES - outlet.unread_by_peer()
            if room <= 0:
                held = True
                continue
            served = True
            # One frame per transport for all its peers (ipc.Channel.send_packets); a session
            # that moved to another link meanwhile is sent on its new one.
            by_link: dict[ipc.Channel, list[tuple[str, list[bytes]]]] = {}
            for session, batch in self.sessions.dispatch(
                    queue.pop(min(TURN_BYTES, room), now)).items():
                by_link.setdefault(session.link, []).append((session.peer, batch))
            for channel, batches in by_link.items():
                channel.send_packets(batches)
            more = more or bool(queue)
        if more:
            self._dispatching = True
            asyncio.get_running_loop().call_soon(self._dispatch_turn)
        elif held:  # or sooner, on the next TUN read or packets from a transport
            self._held_for = LINK_POLL if served else min(2 * self._held_for, LINK_POLL_LIMIT)
            self._held = asyncio.get_running_loop().call_later(self._held_for,
                                                               self._dispatch_turn)

    # -- cluster: what the heartbeat publishes -------------------------------------------
    def live_transports(self) -> set[str]:
        return set(self.transports.values())

    def live_sessions(self) -> list[LiveSession]:
        return [LiveSession(s.peer, s.transport, s.endpoint, s.handshake_at)
                for s in self.sessions]

    # -- admin --------------------------------------------------------------------------
    async def _serve_admin(self, channel: ipc.Channel) -> None:
        with contextlib.suppress(ipc.ChannelClosed):
            while True:
                frame = await channel.recv()
                if isinstance(frame, Status):
                    await channel.send_reliable(self.status())
                elif isinstance(frame, Reload):
                    self.reload()
                    await channel.send_reliable(Reloaded())
                elif isinstance(frame, ManifestUpdated):
                    self.push_manifest()
                    await channel.send_reliable(ManifestPushed())
                else:
                    await channel.send_reliable(Error(f"unknown request {frame.TAG}"))

    def status(self) -> RouterStatus:
        bound = runtime.read_runtime_for_service(self.config.transports_dir)
        connected = set(self.transports.values())
        transports = [
            TransportState(name, name in connected, bound.get(name, {}).get("bound", []))
            for name in Transport
            if name in connected or name in bound
        ]
        self._account_usage()
        peers = []
        for peer in self.registry:
            state = PeerState(
                name=peer.name, enabled=peer.enabled, address=peer.addresses, connected=False,
                usage_bytes=self.usage.get(peer.name), quota_bytes=peer.quota_bytes,
                expires=peer.expires, refused=self.gate.refused.get(peer.name),
                refused_since=self.refused_since.get(peer.name),
            )
            session = self.sessions.get(peer.name)
            if session is not None:
                state = dataclasses.replace(
                    state, connected=True,
                    address=[str(ipaddress.ip_address(a)) for a in session.addresses],
                    transport=session.transport, endpoint=session.endpoint,
                    last_handshake=session.handshake_at, connected_since=session.connected_at,
                    rx_packets=session.rx_packets, rx_bytes=session.rx_bytes,
                    tx_packets=session.tx_packets, tx_bytes=session.tx_bytes,
                )
            peers.append(state)
        return RouterStatus(
            uptime=time.time() - self.started, tun=self.config.tun.name,
            transports=transports, peers=peers,
            dropped=DroppedPackets(self.sessions.unroutable, self.sessions.spoofed),
            handshakes=HandshakeCounts(self.handshakes_answered, self.handshakes_refused,
                                       self.handshakes_dropped),
            registry=None if self.feed is None else self.feed.status(),
        )


async def serve(config: ServerConfig, args: argparse.Namespace) -> None:
    router = Router(config, HandshakeAuthority(load_server_private_key(config)))
    router.load_manifest()
    await router.open_tun()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, router.reload)
    activated = systemd.listen_fds().get("router")
    accounts = Accounts.from_config(config)
    # Transports (each its own account) and the admin group connect here, so the file is open
    # to everyone: the caller's uid (SO_PEERCRED) decides, a stranger is closed as accepted.
    listener = await ipc.Listener.start(
        activated[0] if activated else config.router_socket, router.on_channel,
        lambda peer, claimed: accounts.role_of(peer, claimed, SERVED_ROLES),
        lambda peer: accounts.share(peer, SERVED_ROLES), protocol=TO_ROUTER, mode=0o666,
    )
    limits = loop.create_task(router.check_limits_forever())
    feed = None if router.feed is None else loop.create_task(router.feed.run())
    heartbeat = None
    if config.registry is not None:
        from services.router.heartbeat import publish_forever  # psycopg only for a cluster
        heartbeat = loop.create_task(publish_forever(config, router))
    exporter = await metrics.serve(config, "router", metrics.RouterCollector(router))
    systemd.ready(f"tunnel {config.tun.name} up; {sum(1 for p in router.registry)} peers")
    try:
        while True:
            await asyncio.sleep(LEASE_FLUSH_INTERVAL)
            router.leases.flush()
    finally:
        limits.cancel()
        if feed is not None:
            feed.cancel()
        if heartbeat is not None:
            heartbeat.cancel()
        if exporter is not None:
            exporter.close()
        await listener.close()
        router.close()


def main(argv: Sequence[str] | None = None) -> int:
    return run_service("aura-router", "Aura router: TUN device, peer authority, dispatch.",
                       serve, argv)
