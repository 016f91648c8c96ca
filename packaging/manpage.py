"""Write the aura(1) man page from the `aura` argument parser, so the two never disagree.

Run with the packaged environment's Python: `python packaging/manpage.py VERSION > aura.1`.
Every command's complete `--help` text goes into the page, followed by the services, files and
units the package installs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from services.cli.main import build_parser

SERVICES = """\
.TP
.B aura-router
TUN device, IP pool, peer registry, dispatch, NAT and the admin socket
.RI ( /run/aura/router.sock ).
.TP
.B aura-udp
WireGuard protocol over UDP (port 8443); stock WireGuard clients connect here.
.TP
.B aura-tcp
TLS 1.3 over TCP (port 8443) with a fallback chain for flows that are not Aura.
.TP
.B aura-quic
QUIC datagrams (port 8444).
.TP
.B aura-signer
Holds the CA key and signs bridge manifests
.RI ( /run/aura/signer.sock ).
.PP
Each runs as its own systemd service with a socket unit.
.B systemctl start aura-router
starts them all;
.B systemctl stop aura.target
stops them all.
.B systemctl reload aura-router
re-reads the peer registry without dropping clients.
Before
.B aura server init
has written
.IR /etc/aura/server.yaml ,
starting
.B aura-router
(by hand or at boot) fails, its status saying to run
.BR "aura server init" ;
the other units are skipped.
Logs go to the journal:
.B journalctl -u aura-udp -p warning
or
.BR "journalctl AURA_PEER=" NAME .
.PP
The socket units listen where
.I /etc/aura/server.yaml
says
(\\fBtransports.\\fINAME\\fB.listen\\fR and \\fB.port\\fR):
the generator
.B aura-generator
writes their drop-ins at boot and on every
.BR "systemctl daemon-reload" .
After changing a port:
.BR "systemctl daemon-reload && systemctl restart aura.target" ;
.B aura status
says when a transport listens elsewhere than the file says.
.PP
.B aura-manifest-renew.timer
runs
.B aura sign-bridges \\-\\-from-runtime \\-\\-renew-within 30
daily, so the bridge manifest is signed again 30 days before it expires.
"""

FILES = """\
.TP
.I /etc/aura/server.yaml
Server configuration; keys live beside it, the private ones readable by root alone (systemd
hands each service the keys it uses).
.TP
.I /var/lib/aura
Root's; in it one folder per service, which only that service writes:
.I router/
the peer registry, leases and usage;
.I transports/udp/runtime.json
(and tcp, quic) the address each transport bound;
.I signer/
the manifest serial and the latest manifest.
.TP
.I /run/aura
Unix sockets of the router and the signer.
.TP
.I /etc/aura/clients/NAME.yaml
Client configuration used by
.BR aura-client@NAME.service .
.TP
.I /var/lib/aura-client
That unit's client state:
.I NAME.state.json
the newest bridge manifest,
.I NAME.state.dns.json
the record of the DNS change it made (a client run by hand keeps both beside its config).
.TP
.I /run/aura-client
Control sockets of running clients.
.TP
.I /opt/aura/venv
The private Python environment the package carries.
.TP
.I /run/systemd/generator/aura-*.socket.d/50-aura-listen.conf
Socket ports from the configuration, written by
.IR /lib/systemd/system-generators/aura-generator .
"""


def escape(text: str) -> str:
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        # A leading dot or quote would be read as a request.
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def commands(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, str]]:
    """(command line, help text) for the parser and every sub-command below it, depth first."""
    found = [(path, parser.format_help())]
    for action in parser._actions:  # argparse exposes sub-parsers only through this
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.extend(commands(child, f"{path} {name}"))
    return found


def render(version: str, today: datetime.date) -> str:
    parser = build_parser()
    out = [
        f'.TH AURA 1 "{today.isoformat()}" "aura {version}" "Aura VPN"',
        ".SH NAME",
        "aura \\- Aura VPN server administration and Linux client",
        ".SH SYNOPSIS",
        ".B aura",
        "[\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        ".SH COMMANDS",
    ]
    for line, help_text in commands(parser, "aura"):
        out += [".SS " + escape(line), ".nf", escape(help_text.rstrip()), ".fi"]
    out += [".SH SERVICES", SERVICES.rstrip(), ".SH FILES", FILES.rstrip()]
    out += [".SH SEE ALSO", "systemctl(1), journalctl(1), wg(8)"]
    return "\n".join(out) + "\n"


def main() -> None:
    # SOURCE_DATE_EPOCH keeps the page identical across rebuilds of one commit.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    today = datetime.datetime.fromtimestamp(epoch, datetime.UTC).date()
    sys.stdout.write(render(sys.argv[1], today))


if __name__ == "__main__":
    main()
