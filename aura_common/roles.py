"""The roles Aura's processes play: the three transports, and every service around them.

A transport's name is also its service role, its config section (`transports.udp`), its
runtime.json entry, its manifest field and its client carrier.
"""

from __future__ import annotations

import enum


class Transport(enum.StrEnum):
    """A transport, in the order the services, units and status list them."""

    UDP = "udp"
    TCP = "tcp"
    QUIC = "quic"


def is_transport(name: object) -> bool:
    """Whether `name` names a transport (`in Transport` refuses a plain str before 3.12)."""
    return any(name == transport for transport in Transport)


# Plain strings from here on: these go into config files, which YAML writes only as `str`.
# The order a client tries the transports in unless its config says otherwise: fastest first.
CLIENT_ORDER = (Transport.UDP.value, Transport.QUIC.value, Transport.TCP.value)
SERVICE_ROLES = ("router", *(t.value for t in Transport), "signer")
METRICS_SERVICES = ("router", *(t.value for t in Transport))  # the signer has no network
