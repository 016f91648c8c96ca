"""Write the transports' systemd units from one template each, at package build time.

`aura-udp`, `aura-tcp` and `aura-quic` (service and socket) differ only in their name, their
description, the key they are handed and their listen directive; everything else (sandbox,
restart policy, ordering) is written once in units/aura-transport.{service,socket}.in.
Named units, not a template unit `aura-transport@.service`: operators and the spec know them
as `aura-udp` etc. (`systemctl start aura-udp`, `journalctl -u aura-tcp`), each socket unit
activates the service of its own name, and systemd does not alias a plain name to a template
instance.

Run with the packaged environment's Python: `python packaging/units.py UNITS_DIR OUT_DIR`.
"""

from __future__ import annotations

import os
import sys

from aura_common.config import TransportsConfig
from aura_common.roles import Transport
from services.cli.server import SECRETS
from services.generator.main import DIRECTIVES

DESCRIPTIONS = {
    Transport.UDP: "WireGuard over UDP",
    Transport.TCP: "TLS over TCP",
    Transport.QUIC: "QUIC",
}
NO_KEY = """\
# No private key: the router answers handshakes (server.pub is public). It writes only its
# own runtime.json (its folder)."""
# A stream socket unit binds its port again as soon as it has closed it (`systemctl restart
# aura.target`, an upgrade), while a process systemd has just forked may still hold a copy of
# the old listening socket: the `(sd-chown)` helper of aura-signer.socket (SocketGroup=), any
# service before it closes what it inherited. Without SO_REUSEPORT that bind fails
# (EADDRINUSE), the socket unit fails and its service with it. Datagram sockets bind again
# anyway (SO_REUSEADDR), and a stale copy in a reuse-port group would get a share of datagrams.
STREAM_OPTIONS = """
# Bound again while a process systemd forked may still hold the old socket (packaging/units.py).
ReusePort=yes"""
HANDED_KEYS = """\
# Keys stay root-only on disk; systemd hands this service a copy of the ones it uses
# (in $CREDENTIALS_DIRECTORY). It writes only its own runtime.json (its folder)."""


def credentials(transport: Transport) -> str:
    """The keys the service is handed: those `aura server run` hands it too."""
    keys = SECRETS[transport]
    if not keys:
        return NO_KEY
    return "\n".join([HANDED_KEYS, *(f"LoadCredential={key}:/etc/aura/{key}" for key in keys)])

def render(template: str, transport: Transport) -> str:
    """One transport's unit from a template's text."""
    # The default port is the config's: the generator's drop-in overrides it from server.yaml.
    port = TransportsConfig().listener(transport).port
    listen = f"{DIRECTIVES[transport]}={port}"
    if DIRECTIVES[transport] == "ListenStream":
        listen += STREAM_OPTIONS
    for key, value in (("@DESCRIPTION@", DESCRIPTIONS[transport]),
                       ("@CREDENTIALS@", credentials(transport)),
                       ("@LISTEN@", listen),
                       ("@NAME@", transport.value)):
        template = template.replace(key, value)
    return template


def transport_units(units_dir: str) -> dict[str, str]:
    """File name -> text of every transport's service and socket unit."""
    units = {}
    for kind in ("service", "socket"):
        with open(os.path.join(units_dir, f"aura-transport.{kind}.in")) as f:
            template = f.read()
        for transport in Transport:
            units[f"aura-{transport}.{kind}"] = render(template, transport)
    return units


def main() -> int:
    units_dir, out_dir = sys.argv[1:]
    for name, text in transport_units(units_dir).items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
