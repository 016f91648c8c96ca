"""In-memory stand-ins for the client's TUN and carriers, so the whole client runs without root.

In the spirit of wireguard-go's `tuntest` and `bindtest`:

* `MemoryTun` is a `TunnelDevice` whose kernel side is the other end of a socket pair: a test
  `inject`s the packets the kernel would route into the tunnel and `delivered` returns what the
  client wrote back. Plans and MTUs are only recorded.
* `LoopbackHub` is a server in this process with one WireGuard `Device` per transport (each
  server transport holds its own sessions), reached by `LoopbackCarrier`s. A test blocks a
  transport (a firewall drops everything: a connection never opens, datagrams vanish), stops it
  (nothing listens: refused, or ICMP port unreachable for UDP), starts it again, and reads which
  transport carried which packet.

They live beside the interfaces they stand in for, so a change to the carrier protocol or to the
TUN's shows its fake in the same folder.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import itertools
import socket
from collections.abc import Iterable, Mapping, Sequence

from aura_common.addresses import IPAddress
from aura_common.config import ClientConfig
from aura_common.roles import CLIENT_ORDER
from aura_common.wireguard import Device, Event, HandshakeCompleted, Received, Transmit
from services.client.carriers.base import CarrierFactory, CarrierLifecycle, Deliver
from services.client.dns import Record
from services.client.routes import TunnelPlan

TRANSPORTS = CLIENT_ORDER
CONNECTION_ORIENTED = frozenset({"quic", "tcp"})
_PACKET_LIMIT = 65535


class MemoryTun:
    """A TUN device in memory (`services.client.tunnel.TunnelDevice`)."""

    def __init__(self, name: str, mtu: int) -> None:
        self.name = name
        self.mtu = mtu
        self.plan = TunnelPlan((), ())
        self.is_up = False
        self.closed = False
        self._kernel, self._device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._kernel.setblocking(False)
        self._device.setblocking(False)
        self._read_error: int | None = None

    @property
    def tun(self) -> MemoryTun:
        return self

    # -- the client's side --------------------------------------------------------------------

    def fileno(self) -> int:
        return self._device.fileno()

    def read_batch(self, limit: int = 256) -> list[bytes]:
        if self._read_error is not None:
            raise OSError(self._read_error, "memory TUN failed")
        packets: list[bytes] = []
        for _ in range(limit):
            try:
                packets.append(self._device.recv(_PACKET_LIMIT))
            except BlockingIOError:
                break
        return packets

    def write_batch(self, packets: Sequence[bytes]) -> None:
        for packet in packets:
            try:
                self._device.send(packet)
            except BlockingIOError:
                return  # a full queue drops, as the kernel's does

    def up(self) -> None:
        self.is_up = True

    def set_mtu(self, mtu: int) -> None:
        self.mtu = mtu

    def apply(self, plan: TunnelPlan) -> None:
        self.plan = plan

    def close(self) -> None:
        self.closed = True
        self._kernel.close()
        self._device.close()

    # -- the kernel's side, for tests ---------------------------------------------------------

    def inject(self, *packets: bytes) -> None:
        """Packets the kernel routes into the tunnel."""
        for packet in packets:
            self._kernel.send(packet)

    async def delivered(self) -> bytes:
        """The next packet the client wrote to the tunnel device."""
        return await asyncio.get_running_loop().sock_recv(self._kernel, _PACKET_LIMIT)

    def fail(self, code: int = errno.EIO) -> None:
        """Make every read fail from now on, as a TUN whose device went away."""
        self._read_error = code
        self._kernel.send(b"\x45")  # wakes the reader


class MemoryResolver:
    """A `services.client.dns.Strategy` that changes nothing and keeps what it would apply."""

    name = "memory"

    def __init__(self) -> None:
        self.servers: list[str] = []

    def prepare(self, interface: str, servers: Sequence[IPAddress]) -> Record:
        return {"interface": interface, "servers": [str(s) for s in servers]}

    def apply(self, record: Record) -> None:
        self.servers = list(record["servers"])

    def restore(self, record: Record) -> None:
        self.servers = []


class LoopbackServer:
    """One server transport: a WireGuard device of its own with the client as its one peer."""

    def __init__(self, name: str, private_key: bytes, client_public_key: bytes,
                 preshared_key: bytes | None) -> None:
        self.name = name
        self.device = Device(private_key)
        self.peer = self.device.add_peer(client_public_key, preshared_key=preshared_key)
        self.received: list[bytes] = []  # payloads the client sent over this transport
        self.handshakes = 0
        self.blocked = False  # a firewall drops everything, both ways
        self.listening = True  # False: connections are refused, datagrams bounce (ICMP)
        self.connections: dict[tuple[str, int], LoopbackCarrier] = {}

    def receive(self, source: tuple[str, int], datagrams: list[bytes]) -> None:
        self._handle(self.device.receive(datagrams, source, asyncio.get_running_loop().time()))

    def send(self, packets: list[bytes]) -> None:
        """Encrypt to the client over its latest connection to this transport."""
        self._handle(self.device.send(self.peer, packets, asyncio.get_running_loop().time()))

    def _handle(self, events: Sequence[Event]) -> None:
        for event in events:
            if isinstance(event, Transmit):
                carrier = self.connections.get(event.destination)
                if carrier is not None:
                    asyncio.get_running_loop().call_soon(carrier.arrive, event.datagrams)
            elif isinstance(event, Received):
                self.received.extend(event.packets)
            elif isinstance(event, HandshakeCompleted):
                self.handshakes += 1


class LoopbackHub:
    """The server side of every `LoopbackCarrier` built from `carriers()`. `tunnel_mtus`: the
    MTU ceiling each transport's carrier declares (none where absent)."""

    def __init__(self, private_key: bytes, client_public_key: bytes,
                 preshared_key: bytes | None = None,
                 tunnel_mtus: Mapping[str, int] | None = None) -> None:
        self.servers = {name: LoopbackServer(name, private_key, client_public_key, preshared_key)
                        for name in TRANSPORTS}
        self.tunnel_mtus = dict(tunnel_mtus or {})
        self._ports = itertools.count(1)

    def carriers(self) -> dict[str, CarrierFactory]:
        return {name: functools.partial(LoopbackCarrier, self, name) for name in TRANSPORTS}

    def block(self, *names: str) -> None:
        for name in names:
            self.servers[name].blocked = True

    def unblock(self, *names: str) -> None:
        for name in names:
            self.servers[name].blocked = False

    def stop(self, *names: str) -> None:
        """The transports' processes end: their connections break, nothing listens."""
        for name in names:
            server = self.servers[name]
            server.listening = False
            for carrier in list(server.connections.values()):
                if name in CONNECTION_ORIENTED:
                    carrier.broken("the server closed the connection")

    def start(self, *names: str) -> None:
        for name in names:
            self.servers[name].listening = True

    def next_endpoint(self) -> tuple[str, int]:
        return ("loopback", next(self._ports))

    def received(self) -> dict[str, list[bytes]]:
        """What each transport received from the client so far."""
        return {name: server.received for name, server in self.servers.items()}


class LoopbackCarrier(CarrierLifecycle):
    """A client carrier (`services.client.carriers.ClientCarrier`) to one `LoopbackServer`."""

    def __init__(self, hub: LoopbackHub, name: str, config: ClientConfig) -> None:
        super().__init__()
        self.name = name
        self.tunnel_mtu: int | None = hub.tunnel_mtus.get(name)
        self.server = hub.servers[name]
        self.endpoint = hub.next_endpoint()  # how the server sees this carrier
        self._deliver: Deliver = lambda datagrams: None

    async def open(self, host: str, port: int, deliver: Deliver) -> None:
        self._opening()
        server = self.server
        if self.name in CONNECTION_ORIENTED:
            if server.blocked:
                await asyncio.Future()  # no answer ever: the client's own timeout ends it
            if not server.listening:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        self._deliver = deliver
        server.connections[self.endpoint] = self

    def transmit(self, datagrams: Sequence[bytes]) -> None:
        if self._closed is None or self._closed.done() or self.server.blocked:
            return
        if not self.server.listening:
            self.broken("Connection refused (ICMP port unreachable)")
            return
        asyncio.get_running_loop().call_soon(self.server.receive, self.endpoint, list(datagrams))

    def arrive(self, datagrams: Iterable[bytes]) -> None:
        """Datagrams from the server."""
        if self._closed is not None and not self._closed.done() and not self.server.blocked:
            self._deliver(list(datagrams))

    def _release(self) -> None:
        self.server.connections.pop(self.endpoint, None)
