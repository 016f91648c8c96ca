"""IP forwarding and NAT for client traffic, so clients reach hosts beyond the server.

One nftables table per TUN device (`inet aura_<tun>`) holds everything Aura adds, so it can
be replaced atomically at start and removed whole at stop without touching other rules.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from pathlib import Path

from aura_common.errors import AuraError

log = logging.getLogger(__name__)

FORWARDING = {
    4: Path("/proc/sys/net/ipv4/ip_forward"),
    6: Path("/proc/sys/net/ipv6/conf/all/forwarding"),
}


def table_name(tun: str) -> str:
    return "aura_" + tun.replace("-", "_").replace(".", "_")


def ruleset(
    tun: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], uplink: str | None
) -> str:
    out = f'oifname "{uplink}"' if uplink else f'oifname != "{tun}"'
    masquerade = "\n".join(
        f"    {'ip' if net.version == 4 else 'ip6'} saddr {net} {out} masquerade"
        for net in networks
    )
    table = table_name(tun)
    # The table is declared, flushed and refilled in one transaction: idempotent across restarts.
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
{masquerade}
  }}
  chain forward {{
    type filter hook forward priority mangle; policy accept;
    iifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
    oifname "{tun}" tcp flags syn tcp option maxseg size set rt mtu
  }}
}}
"""


def enable_forwarding(versions: set[int]) -> None:
    for version in sorted(versions):
        path = FORWARDING[version]
        try:
            if path.read_text().strip() != "1":
                path.write_text("1\n")
        except OSError as error:
            log.warning(
                "cannot enable IPv%d forwarding (%s): clients will reach only the server; "
                "set it with sysctl (the package ships /usr/lib/sysctl.d/60-aura.conf)",
                version, error.strerror,
            )


def install(
    tun: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], uplink: str | None
) -> None:
    enable_forwarding({net.version for net in networks})
    result = subprocess.run(
        ["nft", "-f", "-"], input=ruleset(tun, networks, uplink), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise AuraError(f"installing NAT rules with nft failed: {result.stderr.strip()}")
    log.info("NAT for %s out of %s", ", ".join(map(str, networks)), uplink or "any interface")


def remove(tun: str) -> None:
    subprocess.run(["nft", "delete", "table", "inet", table_name(tun)], capture_output=True)
