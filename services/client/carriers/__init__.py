"""Client carriers: how WireGuard messages travel between the client and the server.

`CARRIERS` maps each transport to the carrier the client builds for one attempt at it
(`base.ClientCarrier`); `services.client.fakes` has in-memory ones for tests.
"""

from __future__ import annotations

from aura_common.roles import Transport
from services.client.carriers import quic, tcp, udp
from services.client.carriers.base import CarrierFactory

CARRIERS: dict[str, CarrierFactory] = {
    Transport.UDP: udp.Carrier, Transport.QUIC: quic.Carrier, Transport.TCP: tcp.Carrier,
}
