"""`aura provision-client`, `aura edit-client`, `aura revoke-client`, `aura list-clients`."""

from __future__ import annotations

import argparse
import datetime
import io
import ipaddress
import json
import os
import sys
from typing import Any

import qrcode

from aura_common.config import (
    ClientConfig,
    ClientInterface,
    ClientServer,
    ClientTransports,
    ClientTunnel,
    ServerConfig,
    encode_key,
    format_host_port,
)
from aura_common.errors import AuraError
from aura_common.ipc.frames import Reload
from aura_common.pki.keys import new_key_pair, read_key_file, server_public_key
from aura_common.pki.manifest import MAX_FILE_BYTES
from aura_common.roles import Transport
from aura_common.state import runtime
from aura_common.state.atomic import read_state_file, write_atomic
from aura_common.state.client_limits import (
    EXPIRY_EXAMPLE,
    SIZE_EXAMPLE,
    Usage,
    format_size,
    parse_expiry,
    parse_size,
)
from aura_common.state.pool import AddressPool
from aura_common.state.registry import RegisteredPeer, open_store
from aura_common.state.timestamps import format_time
from aura_common.wireguard import generate_private_key
from services.cli.admin import RouterNotRunning, router_status, tell_router
from services.client.routes import subtract

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ALL_TRAFFIC = ("0.0.0.0/0", "::/0")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    provision = commands.add_parser(
        "provision-client", help="register a client and write its config",
        description="Register a client (new key pair and preshared key) and write its config: "
                    "`aura` (YAML for `aura client up`), `wireguard` (a wg-quick file for stock "
                    "WireGuard apps) or `qr` (that file as a QR code in the terminal).",
    )
    provision.add_argument("name", help="client name: lowercase letters, digits, . _ -")
    provision.add_argument("--format", choices=("aura", "wireguard", "qr"), default="aura")
    provision.add_argument("--vpn-cidrs", nargs="+", metavar="CIDR",
                           help="networks routed through the tunnel (default: everything)")
    provision.add_argument("--direct-cidrs", nargs="+", metavar="CIDR", default=[],
                           help="networks that bypass the tunnel")
    provision.add_argument("--address", help="a fixed IPv4 address from the pool")
    provision.add_argument("-o", "--output", metavar="FILE",
                           help="where to write the config (default NAME.yaml or NAME.conf in "
                                "the current folder; with --format qr, a .png path saves a PNG)")
    _limit_options(provision)
    provision.set_defaults(func=provision_client)

    edit = commands.add_parser(
        "edit-client", help="change a client's expiry or traffic quota",
        description="Change a client's limits; the router applies them at once. A client past "
                    "its expiry or quota is refused on every transport until they are lifted.",
    )
    edit.add_argument("name")
    _limit_options(edit)
    edit.set_defaults(func=edit_client)

    revoke = commands.add_parser("revoke-client", help="revoke a client at once, everywhere")
    revoke.add_argument("name")
    revoke.set_defaults(func=revoke_client)

    listing = commands.add_parser("list-clients", help="list provisioned clients")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=list_clients)


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--expires", metavar="WHEN",
                        help=f"refuse the client from then on: {EXPIRY_EXAMPLE}")
    parser.add_argument("--quota", metavar="SIZE",
                        help=f"refuse the client once its traffic (received + sent through the "
                             f"tunnel) reaches {SIZE_EXAMPLE}; none removes it")


def _limit_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The registry fields `--expires` and `--quota` set (only those given)."""
    changes: dict[str, Any] = {}
    if args.expires is not None:
        moment = parse_expiry(args.expires, datetime.datetime.now(datetime.UTC))
        changes["expires"] = None if moment is None else format_time(moment)
    if args.quota is not None:
        changes["quota_bytes"] = parse_size(args.quota)
    return changes


def describe_limits(peer: RegisteredPeer) -> str:
    quota = "no quota" if peer.quota_bytes is None else f"quota {format_size(peer.quota_bytes)}"
    expires = "never expires" if peer.expires is None else f"expires {peer.expires}"
    return f"{quota}, {expires}"


# -- routes ---------------------------------------------------------------------------------
def parse_networks(values: list[str] | tuple[str, ...], option: str) -> list[Network]:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise AuraError(f"{option} {value}: expected a network such as 10.0.0.0/8") from None
    return networks


# -- provisioning ---------------------------------------------------------------------------
def _endpoint_ports(config: ServerConfig) -> dict[str, int]:
    """Ports clients should use: what the transports really bound, else the configured ones."""
    # Plain strings: the ports go into the client's YAML file.
    ports = {t.value: config.transports.listener(t).port for t in Transport}
    try:
        bound = runtime.read_runtime(config.transports_dir)
    except AuraError:
        return ports
    return ports | runtime.listening_ports({n: e["bound"] for n, e in bound.items()})


def _current_manifest(config: ServerConfig) -> dict[str, Any] | None:
    """The signer's manifest (in its account's folder: read as a state file, no link)."""
    try:
        data = read_state_file(config.manifest_file, MAX_FILE_BYTES)
        manifest = None if data is None else json.loads(data)
    except (AuraError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _register_peer(
    config: ServerConfig, name: str, address: str | None, limits: dict[str, Any]
) -> tuple[RegisteredPeer, bytes]:
    private, public = new_key_pair()
    preshared = generate_private_key()
    pool = AddressPool(config.network.ipv4, config.network.ipv6)
    with open_store(config).edit() as registry:
        if registry.get(name) is not None:
            raise AuraError(f"a client named {name!r} exists; revoke it first or pick another name")
        taken = registry.taken_addresses()
        v4: object | None = None
        v6: object | None = None  # dynamic pool: leased on connect
        if address is not None:
            v4, v6 = pool.validate_static(address)
            if str(v4) in taken:
                raise AuraError(f"--address {address}: already used by another client")
        elif config.network.strategy == "static":
            v4, v6 = pool.next_free(taken)
        peer = RegisteredPeer(
            name=name, public_key=public, preshared_key=preshared,
            address_v4=str(v4) if v4 else None, address_v6=str(v6) if v6 else None,
            enabled=True, **limits,
        )
        registry.add(peer)
    return peer, private


def wireguard_config(
    config: ServerConfig, peer: RegisteredPeer, private: bytes, routes: list[Network]
) -> str:
    if not peer.address_v4:
        raise AuraError(
            "stock WireGuard clients need a fixed address: the pool strategy is dynamic, "
            "so pass --address"
        )
    addresses = [f"{peer.address_v4}/32"] + ([f"{peer.address_v6}/128"] if peer.address_v6 else [])
    dns = ", ".join(config.network.dns)
    lines = [
        "[Interface]",
        f"PrivateKey = {encode_key(private)}",
        f"Address = {', '.join(addresses)}",
        *([f"DNS = {dns}"] if dns else []),
        f"MTU = {config.tun.mtu}",
        "",
        "[Peer]",
        f"PublicKey = {encode_key(server_public_key(config))}",
        f"PresharedKey = {encode_key(peer.preshared_key or b'')}",
        f"AllowedIPs = {', '.join(map(str, routes))}",
        f"Endpoint = {format_host_port(config.public_host, _endpoint_ports(config)['udp'])}",
        "PersistentKeepalive = 25",
        "",
    ]
    return "\n".join(lines)


def aura_config(
    config: ServerConfig, peer: RegisteredPeer, private: bytes, vpn: list[Network],
    direct: list[Network],
) -> str:
    ports = _endpoint_ports(config)
    addresses = [ipaddress.ip_interface(f"{peer.address_v4}/32")] if peer.address_v4 else []
    if peer.address_v6:
        addresses.append(ipaddress.ip_interface(f"{peer.address_v6}/128"))
    return ClientConfig(
        name=peer.name,
        interface=ClientInterface(private_key=private, addresses=tuple(addresses),
                                  mtu=config.tun.mtu, dns=config.network.dns),
        server=ClientServer(public_key=server_public_key(config), host=config.public_host,
                            ca_public_key=read_key_file(config.ca_public_key_file),
                            preshared_key=peer.preshared_key or None),
        transports=ClientTransports(udp=ports["udp"], quic=ports["quic"], tcp=ports["tcp"]),
        tunnel=ClientTunnel(vpn=tuple(vpn), direct=tuple(direct)),
        manifest=_current_manifest(config),
    ).dump()


def _write_private(path: str, data: bytes) -> None:
    """A client's config (its private key) for the operator: ours, 0600, even in a folder
    another account owns, which may neither receive it nor redirect it by a link."""
    write_atomic(path, data, mode=0o600, owner=(os.geteuid(), os.getegid()))
    print(f"wrote {path}", file=sys.stderr)


def provision_client(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    vpn = parse_networks(args.vpn_cidrs or ALL_TRAFFIC, "--vpn-cidrs")
    direct = parse_networks(args.direct_cidrs, "--direct-cidrs")
    if args.format != "aura" and not args.address and config.network.strategy == "dynamic":
        raise AuraError("stock WireGuard clients need a fixed address: pass --address")
    peer, private = _register_peer(config, args.name, args.address, _limit_changes(args))
    live = tell_router(config, Reload())
    if args.format == "aura":
        _write_private(args.output or f"{peer.name}.yaml",
                       aura_config(config, peer, private, vpn, direct).encode())
    else:
        text = wireguard_config(config, peer, private, subtract(vpn, direct))
        if args.format == "wireguard":
            _write_private(args.output or f"{peer.name}.conf", text.encode())
        else:
            show_qr(text, args.output)
    addresses = ", ".join(a for a in (peer.address_v4, peer.address_v6) if a) or "leased on connect"
    limits = f"; {describe_limits(peer)}" if peer.limited else ""
    print(f"provisioned {peer.name} ({addresses}){limits}"
          + ("" if live else "; router not running"), file=sys.stderr)
    return 0


def show_qr(text: str, output: str | None) -> None:
    code = qrcode.QRCode(border=1, error_correction=qrcode.constants.ERROR_CORRECT_L)
    code.add_data(text)
    code.make(fit=True)
    if output:
        png = io.BytesIO()
        code.make_image().save(png)
        _write_private(output, png.getvalue())
    else:
        code.print_ascii(out=sys.stdout, invert=True)


# -- editing, revoking and listing ---------------------------------------------------------
def edit_client(args: argparse.Namespace) -> int:
    changes = _limit_changes(args)
    if not changes:
        raise AuraError("edit-client: nothing to change; pass --expires and/or --quota")
    config = ServerConfig.load(args.config)
    with open_store(config).edit() as registry:
        peer = registry.replace(args.name, **changes)
    if not tell_router(config, Reload()):
        print(f"{peer.name}: {describe_limits(peer)}; router not running, applies when it starts")
        return 0
    refused = _usage_and_refusals(config)[1].get(peer.name)
    print(f"{peer.name}: {describe_limits(peer)}"
          + (f"; still refused: {refused}" if refused else ""))
    return 0


def revoke_client(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    with open_store(config).edit() as registry:
        registry.revoke(args.name)
    live = tell_router(config, Reload())
    print(f"revoked {args.name}" + (": its sessions are closed" if live else ""))
    return 0


def _usage_and_refusals(config: ServerConfig) -> tuple[dict[str, int], dict[str, str]]:
    """Live usage and refusals from the router; else usage as last saved (no refusals known)."""
    try:
        status = router_status(config)
    except RouterNotRunning:
        return _saved_usage(config), {}
    peers = status.get("peers", [])
    return ({p["name"]: p.get("usage_bytes", 0) for p in peers},
            {p["name"]: p["refused"] for p in peers if p.get("refused")})


def _saved_usage(config: ServerConfig) -> dict[str, int]:
    """Usage as last saved: the cluster's totals in the database, else the router's file."""
    if config.registry is not None:
        from aura_common.cluster.store import DatabaseStore

        return DatabaseStore(config).usage()
    usage = Usage.load(config.usage_file)
    return {p.name: usage.get(p.name) for p in open_store(config).load()}


def list_clients(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    peers = list(open_store(config).load())
    usage, refused = _usage_and_refusals(config)
    if args.json:
        print(json.dumps([
            {"name": p.name, "public_key": encode_key(p.public_key),
             "address": [a for a in (p.address_v4, p.address_v6) if a],
             "enabled": p.enabled, "created": p.created, "expires": p.expires,
             "quota_bytes": p.quota_bytes, "usage_bytes": usage.get(p.name, 0),
             "refused": refused.get(p.name)}
            for p in peers
        ], indent=2))
        return 0
    if not peers:
        print("no clients; add one with `aura provision-client NAME`")
        return 0
    print(f"{'NAME':<20} {'ADDRESS':<34} {'USAGE':>10} {'QUOTA':>10} {'EXPIRES':<21} "
          f"{'PUBLIC KEY':<45} CREATED")
    for p in peers:
        address = ", ".join(a for a in (p.address_v4, p.address_v6) if a) or "dynamic"
        quota = "-" if p.quota_bytes is None else format_size(p.quota_bytes)
        why = refused.get(p.name)
        print(f"{p.name:<20} {address:<34} {format_size(usage.get(p.name, 0)):>10} {quota:>10} "
              f"{p.expires or 'never':<21} {encode_key(p.public_key):<45} {p.created}"
              + (f"  REFUSED: {why}" if why else ""))
    return 0
