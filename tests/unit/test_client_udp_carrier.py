"""The client's UDP carrier on real loopback sockets: an ICMP error for an earlier datagram
breaks the path, whether the next read or the next send meets it first."""

from __future__ import annotations

import asyncio
import socket
import time
from ipaddress import ip_interface

from aura_common.config import ClientConfig, ClientInterface, ClientServer
from aura_common.wireguard import generate_private_key, public_key
from services.client.carriers.udp import Carrier


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _open_to_nothing() -> tuple[Carrier, int]:
    port = _closed_port()
    config = ClientConfig(
        name="alice",
        interface=ClientInterface(generate_private_key(), (ip_interface("10.77.0.2/32"),)),
        server=ClientServer(public_key(generate_private_key()), "127.0.0.1", bytes(32)),
    )
    carrier = Carrier(config)
    await carrier.open("127.0.0.1", port, lambda datagrams: None)
    return carrier, port


def test_the_read_that_meets_port_unreachable_breaks_the_path() -> None:
    async def scenario() -> None:
        carrier, port = await _open_to_nothing()
        carrier.transmit([b"\x04" + bytes(31)])  # answered by ICMP port unreachable
        reason = await asyncio.wait_for(carrier.wait_closed(), 5)
        assert f"ICMP port unreachable: nothing listens on udp 127.0.0.1:{port}" in reason
        assert carrier.sock is None

    asyncio.run(scenario())


def test_the_send_that_meets_port_unreachable_breaks_the_path() -> None:
    async def scenario() -> None:
        carrier, _ = await _open_to_nothing()
        carrier.transmit([b"\x04" + bytes(31)])
        time.sleep(0.05)  # the ICMP error is queued; the event loop has not read it
        carrier.transmit([b"\x04" + bytes(31)])
        reason = await asyncio.wait_for(carrier.wait_closed(), 0.01)
        assert "ICMP port unreachable" in reason

    asyncio.run(scenario())
