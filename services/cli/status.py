"""`aura status`: transports, peers and live counters, from the running router; with
`--cluster`, every member of the cluster from what each publishes in the database."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from aura_common.cluster.presence import DOWN_AFTER, Member, cluster_members
from aura_common.config import ServerConfig
from aura_common.roles import Transport, is_transport
from aura_common.state.client_limits import format_size
from aura_common.state.runtime import ports_of
from services.cli.admin import router_status


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser("status", help="show transports, peers and counters")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--cluster", action="store_true",
                        help="every member of the cluster: transports, endpoints, live sessions "
                        "(from the registry database)")
    status.set_defaults(func=show_status)


def human_duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def render(status: dict[str, Any], now: float) -> str:
    lines = [f"aura-router: up {human_duration(status['uptime'])}, tunnel {status['tun']}", ""]
    lines.append("transports:")
    for transport in status["transports"]:
        state = "connected" if transport["connected"] else "not connected to the router"
        lines.append(f"  {transport['name']:<5} {', '.join(transport['bound']) or '-':<28} {state}")
    if not status["transports"]:
        lines.append("  none running")
    for difference in status.get("config_differences", []):
        lines.append(f"  ! {difference}")
    if status.get("config_differences"):
        lines.append(f"  ! {PORT_HINT}")
    lines += ["", "peers:"]
    header = (f"  {'NAME':<16} {'ADDRESS':<30} {'TRANSPORT':<9} {'ENDPOINT':<24} "
              f"{'HANDSHAKE':<10} {'RX':>20} {'TX':>20}  USAGE / LIMITS")
    lines.append(header)
    for peer in status["peers"]:
        address = ", ".join(peer["address"]) or "dynamic"
        if peer["connected"]:
            handshake = human_duration(now - peer["last_handshake"]) + " ago"
            rx = f"{peer['rx_packets']} pkt {format_size(peer['rx_bytes'])}"
            tx = f"{peer['tx_packets']} pkt {format_size(peer['tx_bytes'])}"
            line = (f"  {peer['name']:<16} {address:<30} {peer['transport']:<9} "
                    f"{peer['endpoint']:<24} {handshake:<10} {rx:>20} {tx:>20}")
        else:
            line = f"  {peer['name']:<16} {address:<30} {'-':<9} {'-':<24} {'-':<10} {'':>41}"
        lines.append(f"{line}  {usage_and_limits(peer)}")
    if not status["peers"]:
        lines.append("  no clients; add one with `aura provision-client NAME`")
    return "\n".join(lines)


def usage_and_limits(peer: dict[str, Any]) -> str:
    """Usage, then quota and expiry where set, then why the peer is refused if it is."""
    text = format_size(peer.get("usage_bytes", 0))
    if peer.get("quota_bytes") is not None:
        text += f" of {format_size(peer['quota_bytes'])}"
    if peer.get("expires"):
        text += f", expires {peer['expires']}"
    if peer.get("refused"):
        text += f"; REFUSED: {peer['refused']}"
    return text


PORT_HINT = ("under systemd, `systemctl daemon-reload && systemctl restart aura.target` makes "
             "the sockets follow the config; without systemd, the configured port was busy")


def port_differences(config: ServerConfig, transports: list[dict[str, Any]]) -> list[str]:
    """One line per transport whose bound port is not the one the config asks for."""
    differences = []
    for transport in transports:
        name = transport["name"]
        section = config.transports.listener(Transport(name)) if is_transport(name) else None
        bound = sorted(ports_of(transport["bound"]))
        if section is not None and bound and bound != [section.port]:
            ports = ", ".join(map(str, bound))
            differences.append(
                f"{transport['name']} listens on port {ports}, but {config.path} says "
                f"transports.{transport['name']}.port: {section.port}")
    return differences


def show_status(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    if args.cluster:
        return show_cluster(config, args.json)
    reply = router_status(config)
    reply["config_differences"] = port_differences(config, reply["transports"])
    if args.json:
        print(json.dumps(reply, indent=2))
    else:
        print(render(reply, time.time()))
    return 0


def show_cluster(config: ServerConfig, as_json: bool) -> int:
    members = cluster_members(config)
    if as_json:
        print(json.dumps({"down_after": DOWN_AFTER,
                          "members": [member_mapping(m) for m in members]}, indent=2))
    else:
        print(render_cluster(members, time.time()))
    return 0


def member_mapping(member: Member) -> dict[str, Any]:
    return {
        "name": member.name, "up": member.up, "silent_for": round(member.silent_for, 3),
        "started_at": member.started_at, "public_host": member.public_host,
        "endpoint": member.endpoint.to_mapping() if member.endpoint else None,
        "transports": [{"name": name, "bound": list(bound)}
                       for name, bound in member.transports.items()],
        "sessions": [vars(session) for session in member.sessions],
        "sessions_total": member.sessions_total, "problem": member.problem,
    }


def render_cluster(members: list[Member], now: float) -> str:
    up = [m for m in members if m.up]
    sessions = sum(m.sessions_total for m in up)
    lines = [f"cluster: {len(members)} members, {len(up)} up, {sessions} live sessions"]
    if not members:
        lines.append("no member has published a heartbeat yet; start aura-router on a member")
    for member in members:
        lines.append("")
        if not member.up:
            lines.append(f"{member.name}: DOWN, silent for {human_duration(member.silent_for)}"
                         f" (down after {DOWN_AFTER:.0f} s)")
            continue
        running = ("" if member.started_at is None
                   else f", running {human_duration(now - member.started_at)}")
        lines.append(f"{member.name}: up, heard {human_duration(member.silent_for)} ago"
                     f"{running}; clients reach it at {member.endpoint or '-'}")
        if member.problem:
            lines.append(f"  ! {member.problem}")
        for name, bound in member.transports.items():
            lines.append(f"  {name:<5} {', '.join(bound) or '-'}")
        if not member.transports:
            lines.append("  no transport running")
        lines.append(f"  sessions: {member.sessions_total}")
        if member.sessions:
            lines.append(f"    {'NAME':<16} {'TRANSPORT':<9} {'ENDPOINT':<24} HANDSHAKE")
        for session in member.sessions:
            handshake = (human_duration(now - session.handshake_at) + " ago"
                         if session.handshake_at else "-")
            lines.append(f"    {session.peer:<16} {session.transport:<9} "
                         f"{session.endpoint:<24} {handshake}")
        if member.sessions_total > len(member.sessions):
            lines.append(f"    ... and {member.sessions_total - len(member.sessions)} more "
                         "(a member publishes at most this many)")
    return "\n".join(lines)
