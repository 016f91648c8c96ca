"""`aura sign-bridges`: have the signer mint a bridge manifest, then let the router push it."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import sys
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common import ipc
from aura_common.cluster.presence import Member, cluster_members
from aura_common.config import ServerConfig
from aura_common.errors import AuraError
from aura_common.ipc.frames import FROM_SIGNER, ManifestUpdated, Sign, Signed
from aura_common.pki import ca
from aura_common.pki.keys import read_key_file
from aura_common.pki.manifest import (
    MAX_ENDPOINTS,
    MAX_EXPIRES_DAYS,
    HostPorts,
    ManifestError,
    SignedManifest,
    parse_endpoint_spec,
    verify,
)
from aura_common.roles import Transport
from aura_common.state.atomic import write_atomic
from aura_common.state.runtime import ports_of, read_runtime, runtime_file
from services.cli.admin import tell_router

DEFAULT_EXPIRES_DAYS = 365


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "sign-bridges",
        help="sign a bridge manifest telling clients where the server listens",
        description="Ask aura-signer for a new signed bridge manifest (the serial goes up by "
        "one), store it, and have the router push it to connected Aura clients.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--endpoints",
        nargs="+",
        metavar="HOST:tcp=N:quic=N:udp=N",
        help="where clients can reach the server; any subset of transports, IPv6 in brackets",
    )
    source.add_argument(
        "--from-runtime",
        action="store_true",
        help="use the ports the running transports bound (runtime.json) and public_host",
    )
    source.add_argument(
        "--from-cluster",
        action="store_true",
        help="list every live member of the cluster (their heartbeats in the registry "
        "database), so Aura clients fail over between them",
    )
    parser.add_argument(
        "--expires",
        type=int,
        default=DEFAULT_EXPIRES_DAYS,
        metavar="DAYS",
        help=f"validity in days (default {DEFAULT_EXPIRES_DAYS})",
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="also write the manifest here")
    parser.add_argument(
        "--renew-within",
        type=int,
        metavar="DAYS",
        help="sign only if the stored manifest expires within DAYS days, is missing or does "
        "not verify (what aura-manifest-renew.timer runs daily)",
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    config = ServerConfig.load(args.config)
    if not 1 <= args.expires <= MAX_EXPIRES_DAYS:
        raise AuraError(f"--expires {args.expires}: expected 1..{MAX_EXPIRES_DAYS} days")
    if args.renew_within is not None:
        if not 0 <= args.renew_within < args.expires:
            raise AuraError(f"--renew-within {args.renew_within}: expected 0..{args.expires - 1} "
                            "days (less than --expires)")
        reason = renewal_reason(config, datetime.datetime.now(datetime.UTC),
                                datetime.timedelta(days=args.renew_within))
        if reason is None:
            return 0
        print(f"renewing: {reason}")
    serial_above = 0
    if args.from_runtime:
        endpoints = [endpoint_from_runtime(config)]
    elif args.from_cluster:
        members = cluster_members(config)
        endpoints = endpoints_from_cluster(members)
        serial_above = newest_serial(members, ca.load_ca_public_key(config.key_dir))
    else:
        endpoints = [parse_endpoint_spec(spec) for spec in args.endpoints]
        if len(endpoints) > MAX_ENDPOINTS:
            raise AuraError(f"--endpoints: at most {MAX_ENDPOINTS} endpoints")
    server_key = read_key_file(os.path.join(config.key_dir, "server.pub"))
    signed = request_signature(config, endpoints, args.expires, server_key, serial_above)
    # Check the signer's work against the CA clients trust before anyone relies on it.
    try:
        manifest = verify(signed, ca.load_ca_public_key(config.key_dir), now=None)
    except ManifestError as error:
        raise AuraError(f"the signer returned a manifest that does not verify: {error}") from None
    print(f"signed bridge manifest, {manifest.summary()}")
    print(f"stored in {config.manifest_file}")
    if args.output:
        try:
            write_atomic(args.output, signed.to_json().encode(), 0o644)
        except OSError as error:
            raise AuraError(f"-o {args.output}: cannot write: {error.strerror}") from None
        print(f"written to {args.output}")
    try:
        pushed = tell_router(config, ManifestUpdated())
    except AuraError as error:
        print(f"aura: warning: could not tell the router to push it: {error}", file=sys.stderr)
    else:
        print(
            "the router pushes it to connected Aura clients"
            if pushed
            else "the router is not running; it sends the manifest to clients once it starts"
        )
    return 0


def renewal_reason(
    config: ServerConfig, now: datetime.datetime, window: datetime.timedelta
) -> str | None:
    """Why the stored manifest needs signing again, or None (after saying why not)."""
    path = config.manifest_file
    try:
        signed = SignedManifest.load(path)
        if signed is None:
            return f"{path}: no manifest yet"
        manifest = verify(signed, ca.load_ca_public_key(config.key_dir), now=None)
    except ManifestError as error:
        return f"{path}: {error}"
    except AuraError as error:
        return str(error)
    if renewal_due(manifest.expires, now, window):
        return f"serial {manifest.serial} expires {manifest.expires:%Y-%m-%d %H:%M} UTC"
    print(f"{path}: serial {manifest.serial} expires {manifest.expires:%Y-%m-%d %H:%M} UTC, "
          f"more than {window.days} days away; not renewed")
    return None


def renewal_due(
    expires: datetime.datetime, now: datetime.datetime, window: datetime.timedelta
) -> bool:
    """A manifest is renewed once it is within `window` of expiry (or past it)."""
    return expires - now <= window


def endpoint_from_runtime(config: ServerConfig) -> HostPorts:
    """`public_host` with the port each live transport bound, from the runtime files."""
    transports = read_runtime(config.transports_dir)
    if not transports:
        raise AuraError(
            f"{config.transports_dir}: no runtime file, so no transport has bound a port yet; "
            "start the server (`systemctl start aura-router` or `aura server run`) or give "
            "--endpoints"
        )
    ports: dict[str, int] = {}
    for name in Transport:
        entry = transports.get(name)
        path = runtime_file(config.transports_dir, name)
        if entry is None:
            if config.transports.listener(name).enabled:
                print(f"aura: warning: {name} is enabled but has no {path}", file=sys.stderr)
            continue
        if not process_alive(entry["pid"]):
            raise AuraError(
                f"{path}: pid: process {entry['pid']} is not running, so the entry is stale; "
                f"start aura-{name} again (it rewrites its entry) or give --endpoints"
            )
        bound_ports = ports_of(entry["bound"])
        if len(bound_ports) != 1:
            raise AuraError(
                f"{path}: bound: expected addresses on one port, found {entry['bound']!r}"
            )
        ports[name] = bound_ports.pop()
    return HostPorts(config.public_host, **ports)


def endpoints_from_cluster(members: list[Member]) -> list[HostPorts]:
    """The endpoint of every member that is up, in name order; down ones are named."""
    live = []
    for member in members:
        if not member.up:
            print(f"leaving out {member.name}: down (silent for {member.silent_for:.0f} s)")
        elif member.endpoint is None:
            print(f"leaving out {member.name}: " + (member.problem or "no transport listening"))
        else:
            live.append(member.endpoint)
    if not live:
        raise AuraError("no member of the cluster is up with a transport listening; "
                        "see `aura status --cluster`")
    if len(live) > MAX_ENDPOINTS:
        raise AuraError(f"{len(live)} members are up, but a manifest lists at most "
                        f"{MAX_ENDPOINTS} endpoints; give --endpoints with the ones to list")
    return live


def newest_serial(members: list[Member], ca_key: ed25519.Ed25519PublicKey) -> int:
    """The highest serial of the manifests members publish that verify against our CA: this
    member's signer must go past it, or clients would refuse the new manifest."""
    serials = [0]
    for member in members:
        if member.manifest is not None:
            with contextlib.suppress(ManifestError):
                serials.append(verify(member.manifest, ca_key, now=None).serial)
    return max(serials)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def request_signature(
    config: ServerConfig, endpoints: list[HostPorts], expires_days: int, server_key: bytes,
    serial_above: int = 0,
) -> SignedManifest:
    """One `sign` exchange with aura-signer; AuraError says what went wrong and what to do."""
    request = Sign(list(endpoints), expires_days, server_key, serial_above)
    reply = ipc.request(
        config.signer_socket, request, Signed, FROM_SIGNER, service="the signer",
        start="start it with `systemctl start aura-signer` or `aura server run`",
        allowed=f"run as root or a member of the '{config.admin_group}' group",
    )
    try:
        return SignedManifest.from_mapping(dataclasses.asdict(reply.manifest))
    except ManifestError as error:
        raise AuraError(f"the signer sent a bad reply: {error.detail}") from None
