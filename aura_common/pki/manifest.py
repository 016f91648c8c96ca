"""The signed bridge manifest: where the server listens, signed by the Aura CA.

I/O-free. The signed body is canonical JSON: UTF-8, keys sorted, no whitespace, ASCII only,
absent ports omitted rather than null. A verifier checks the Ed25519 signature over the body
bytes exactly as carried, then insists the body is in canonical form (re-encoding it must give
the same bytes), so no two parsers can read one signed body differently.

Body fields:

    version            1
    serial             int >= 1, increases with every signing; clients refuse a lower one
    issued, expires    "YYYY-MM-DDTHH:MM:SSZ" (UTC)
    server_public_key  the server's WireGuard public key, base64
    bridges            v1 list of "HOST:PORT" (IPv6 in brackets): every distinct port of every
                       endpoint, in endpoint order, then udp, tcp, quic. A v1 client tries each
                       entry with every transport it has.
    endpoints          list of {"host", "udp", "tcp", "quic"}, ports optional (at least one).
                       Absent in older manifests, which carry only `bridges`.

Serialised form (YAML client configs, `manifest.json`, the in-tunnel control message): a
mapping `{"body": <the JSON text>, "signature": <base64>, "key_id": <CA fingerprint>}`. The
key id is an unsigned hint used only to explain a failure ("signed by another CA").
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from aura_common.config.values import (
    decode_key,
    format_host_port,
    host_problem,
    is_port,
    parse_host_port,
    parse_port,
)
from aura_common.errors import AuraError
from aura_common.pki.ca import key_id
from aura_common.roles import Transport, is_transport
from aura_common.state.atomic import read_state_file

MANIFEST_VERSION = 1
MAX_BODY_BYTES = 4096
MAX_FILE_BYTES = 4 * MAX_BODY_BYTES  # a serialised signed manifest: body, signature, key id
MAX_ENDPOINTS = 16
MAX_EXPIRES_DAYS = 3650
MAX_SERIAL = 2**53 - 1  # exact in every JSON implementation
# A client whose clock runs a little behind the server's still takes a fresh manifest.
CLOCK_SKEW = datetime.timedelta(minutes=10)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_BODY_KEYS = {"version", "serial", "issued", "expires", "server_public_key", "bridges"}


class ManifestError(AuraError):
    """A manifest was refused. `reason` is one of: malformed, bad_signature, wrong_key,
    expired, not_yet_valid, serial_rollback."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"bridge manifest refused: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class HostPorts:
    """A host and the port of each transport it serves (at least one)."""

    host: str
    udp: int | None = None
    tcp: int | None = None
    quic: int | None = None

    def __post_init__(self) -> None:
        problem = host_problem(self.host)
        if problem:
            raise ValueError(f"host {self.host!r}: {problem}")
        ports = self.ports()
        if not ports:
            raise ValueError(f"endpoint {self.host}: needs at least one of udp, tcp, quic")
        for transport, port in ports.items():
            if not is_port(port):
                raise ValueError(f"{transport} port: expected 1..65535, found {port!r}")

    def ports(self) -> dict[str, int]:
        """The ports this endpoint has, by transport, in the order udp, tcp, quic."""
        found = {t.value: getattr(self, t.value) for t in Transport}
        return {name: port for name, port in found.items() if port is not None}

    def address(self, port: int) -> str:
        """`HOST:PORT`, an IPv6 host in brackets."""
        return format_host_port(self.host, port)

    def to_mapping(self) -> dict[str, object]:
        return {"host": self.host, **self.ports()}

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return ":".join([host, *(f"{name}={port}" for name, port in self.ports().items())])


@dataclass(frozen=True, slots=True)
class Manifest:
    serial: int
    issued: datetime.datetime
    expires: datetime.datetime
    server_public_key: bytes
    bridges: tuple[str, ...]
    endpoints: tuple[HostPorts, ...] | None  # None: an older manifest with only `bridges`
    version: int = MANIFEST_VERSION

    @classmethod
    def create(
        cls,
        *,
        serial: int,
        issued: datetime.datetime,
        expires_days: int,
        server_public_key: bytes,
        endpoints: Sequence[HostPorts],
    ) -> Manifest:
        """A new manifest, `bridges` synthesised from `endpoints`; ValueError on bad input."""
        if not 1 <= expires_days <= MAX_EXPIRES_DAYS:
            raise ValueError(f"expiry: expected 1..{MAX_EXPIRES_DAYS} days, found {expires_days}")
        if not endpoints or len(endpoints) > MAX_ENDPOINTS:
            raise ValueError(f"endpoints: expected 1..{MAX_ENDPOINTS}, found {len(endpoints)}")
        if not 1 <= serial <= MAX_SERIAL:
            raise ValueError(f"serial: expected 1..{MAX_SERIAL}, found {serial}")
        if len(server_public_key) != 32:
            raise ValueError("server public key: expected 32 bytes")
        issued = issued.astimezone(datetime.UTC).replace(microsecond=0)
        return cls(
            serial=serial,
            issued=issued,
            expires=issued + datetime.timedelta(days=expires_days),
            server_public_key=bytes(server_public_key),
            bridges=synthesise_bridges(endpoints),
            endpoints=tuple(endpoints),
        )

    def summary(self) -> str:
        lines = [
            f"serial {self.serial}, issued {_format_time(self.issued)},"
            f" expires {_format_time(self.expires)}",
            f"server public key {base64.b64encode(self.server_public_key).decode()}",
        ]
        if self.endpoints is None:
            lines += [f"bridge {bridge} (v1)" for bridge in self.bridges]
        else:
            lines += [f"endpoint {endpoint}" for endpoint in self.endpoints]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class SignedManifest:
    body: bytes  # canonical JSON, exactly as signed
    signature: bytes
    key_id: str | None = None

    def to_mapping(self) -> dict[str, str]:
        mapping = {
            "body": self.body.decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.key_id is not None:
            mapping["key_id"] = self.key_id
        return mapping

    @classmethod
    def from_mapping(cls, value: object) -> SignedManifest:
        """Parse the serialised form; ManifestError('malformed') names the bad field."""
        if not isinstance(value, Mapping):
            raise _malformed("manifest", "a mapping with body and signature")
        unknown = set(value) - {"body", "signature", "key_id"}
        if unknown:
            raise _malformed(str(sorted(map(str, unknown))[0]), "only body, signature, key_id")
        body, signature, hint = value.get("body"), value.get("signature"), value.get("key_id")
        if not isinstance(body, str) or not body or len(body) > MAX_BODY_BYTES:
            raise _malformed("body", f"a JSON text of at most {MAX_BODY_BYTES} bytes")
        if not isinstance(signature, str) or len(signature) != 88:
            raise _malformed("signature", "a base64 Ed25519 signature (64 bytes)")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raw_signature = b""
        if len(raw_signature) != 64:  # 88 characters without padding decode to 66 bytes
            raise _malformed("signature", "a base64 Ed25519 signature (64 bytes)")
        if hint is not None and not (isinstance(hint, str) and _KEY_ID.fullmatch(hint)):
            raise _malformed("key_id", "16 lowercase hex digits")
        try:
            raw_body = body.encode("ascii")
        except UnicodeEncodeError:
            raise _malformed("body", "ASCII-only canonical JSON") from None
        if len(raw_body) > MAX_BODY_BYTES:
            raise _malformed("body", f"at most {MAX_BODY_BYTES} bytes")
        return cls(raw_body, raw_signature, hint)

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: str) -> SignedManifest | None:
        """The manifest stored at `path`, None if there is none. Another account writes it
        (the signer's, a client's user): read as a state file, no link, no FIFO, at most
        `MAX_FILE_BYTES` (ConfigError naming the file), then parsed (ManifestError)."""
        data = read_state_file(path, MAX_FILE_BYTES)
        return None if data is None else cls.from_json(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedManifest:
        if len(text) > MAX_FILE_BYTES:
            raise _malformed("manifest", f"at most {MAX_FILE_BYTES} bytes")
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise _malformed("manifest", "a JSON mapping") from None
        return cls.from_mapping(value)


# -- signing and verifying --------------------------------------------------------------------
def canonical_bytes(manifest: Manifest) -> bytes:
    body: dict[str, object] = {
        "version": manifest.version,
        "serial": manifest.serial,
        "issued": _format_time(manifest.issued),
        "expires": _format_time(manifest.expires),
        "server_public_key": base64.b64encode(manifest.server_public_key).decode(),
        "bridges": list(manifest.bridges),
    }
    if manifest.endpoints is not None:
        body["endpoints"] = [endpoint.to_mapping() for endpoint in manifest.endpoints]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(manifest: Manifest, ca_private_key: ed25519.Ed25519PrivateKey) -> SignedManifest:
    body = canonical_bytes(manifest)
    if len(body) > MAX_BODY_BYTES:
        raise ValueError(f"manifest body is {len(body)} bytes, more than {MAX_BODY_BYTES}")
    return SignedManifest(body, ca_private_key.sign(body), key_id(ca_private_key.public_key()))


def verify(
    signed: SignedManifest,
    ca_public_key: ed25519.Ed25519PublicKey | bytes,
    *,
    now: datetime.datetime | None,
    min_serial: int = 0,
) -> Manifest:
    """Check signature, form, validity period and serial; return the manifest or raise
    ManifestError with the precise reason. `ca_public_key` may be the raw 32 bytes.

    `now=None` skips the validity period: only for reading back a manifest accepted earlier,
    whose serial still counts after it expired.
    """
    if isinstance(ca_public_key, bytes):
        ca_public_key = ed25519.Ed25519PublicKey.from_public_bytes(ca_public_key)
    if len(signed.body) > MAX_BODY_BYTES:
        raise _malformed("body", f"at most {MAX_BODY_BYTES} bytes")
    try:
        ca_public_key.verify(signed.signature, signed.body)
    except InvalidSignature:
        expected = key_id(ca_public_key)
        if signed.key_id is not None and signed.key_id != expected:
            raise ManifestError(
                "wrong_key",
                f"signed by another CA (key id {signed.key_id}; this config trusts {expected})",
            ) from None
        raise ManifestError(
            "bad_signature", "signature does not match the body (altered or corrupted)"
        ) from None
    manifest = parse_body(signed.body)
    if now is not None and now < manifest.issued - CLOCK_SKEW:
        raise ManifestError(
            "not_yet_valid",
            f"not valid before {_format_time(manifest.issued)} (check the clock)",
        )
    if now is not None and now >= manifest.expires:
        raise ManifestError("expired", f"expired at {_format_time(manifest.expires)}")
    if manifest.serial < min_serial:
        raise ManifestError(
            "serial_rollback",
            f"serial {manifest.serial} is lower than {min_serial}, already accepted",
        )
    return manifest


def parse_body(body: bytes) -> Manifest:
    """Parse a canonical body; ManifestError('malformed') names the bad field."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise _malformed("body", "canonical JSON") from None
    if not isinstance(value, dict):
        raise _malformed("body", "a JSON object")
    keys = set(value)
    missing = _BODY_KEYS - keys
    if missing:
        raise _malformed(sorted(missing)[0], "present")
    unknown = keys - _BODY_KEYS - {"endpoints"}
    if unknown:
        raise _malformed(sorted(unknown)[0], "no such field in a version 1 manifest")
    if value["version"] != MANIFEST_VERSION or type(value["version"]) is not int:
        raise _malformed("version", str(MANIFEST_VERSION))
    serial = value["serial"]
    if type(serial) is not int or not 1 <= serial <= MAX_SERIAL:
        raise _malformed("serial", f"an integer 1..{MAX_SERIAL}")
    issued = _parse_time(value["issued"], "issued")
    expires = _parse_time(value["expires"], "expires")
    if expires <= issued:
        raise _malformed("expires", "a time after issued")
    server_key = _parse_key(value["server_public_key"])
    bridges = value["bridges"]
    if not isinstance(bridges, list) or not 1 <= len(bridges) <= len(Transport) * MAX_ENDPOINTS:
        raise _malformed("bridges", "a non-empty list of HOST:PORT")
    for index, bridge in enumerate(bridges):
        if not isinstance(bridge, str) or not _is_bridge(bridge):
            raise _malformed(f"bridges[{index}]", "HOST:PORT (IPv6 host in brackets)")
    endpoints: tuple[HostPorts, ...] | None = None
    if "endpoints" in value:
        endpoints = _parse_endpoints(value["endpoints"])
        if list(synthesise_bridges(endpoints)) != bridges:
            raise _malformed("bridges", "the HOST:PORT list derived from endpoints")
    manifest = Manifest(
        serial=serial,
        issued=issued,
        expires=expires,
        server_public_key=server_key,
        bridges=tuple(bridges),
        endpoints=endpoints,
    )
    if canonical_bytes(manifest) != body:
        raise _malformed("body", "canonical JSON (sorted keys, no spaces, ASCII)")
    return manifest


def synthesise_bridges(endpoints: Iterable[HostPorts]) -> tuple[str, ...]:
    bridges: list[str] = []
    for endpoint in endpoints:
        for port in endpoint.ports().values():
            address = endpoint.address(port)
            if address not in bridges:
                bridges.append(address)
    return tuple(bridges)


# -- endpoints as the operator types them ---------------------------------------------------
def parse_endpoint_spec(spec: str) -> HostPorts:
    """Parse `HOST:tcp=N:quic=N:udp=N` (any non-empty subset; IPv6 host in brackets).

    Errors are AuraErrors naming `--endpoints`, the bad part and what was expected.
    """

    def fail(part: str, expected: str) -> AuraError:
        return AuraError(f"--endpoints {spec!r}: bad {part}: expected {expected}")

    syntax = "HOST:tcp=N:quic=N:udp=N (at least one transport)"
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket:
            raise fail(f"host {spec!r}", "a closing ] after an IPv6 address")
        if not _is_ipv6(host):
            raise fail(f"host [{host}]", "an IPv6 address inside brackets")
        if rest and not rest.startswith(":"):
            raise fail(f"text after [{host}]", f":transport=port, as in {syntax}")
        rest = rest[1:]
    else:
        host, _, rest = spec.partition(":")
        if "=" in host:
            raise fail("host", f"a host first, as in {syntax}")
        if rest and "=" not in rest.split(":")[0]:
            before_ports = spec.split("=")[0].rsplit(":", 1)[0]
            if _is_ipv6(before_ports) or _is_ipv6(spec):
                raise fail(f"host {before_ports!r}", "an IPv6 address in brackets, as in [::1]")
    problem = host_problem(host)
    if problem:
        raise fail(f"host {host!r}", problem)
    if not rest:
        raise fail("endpoint", f"at least one transport port, as in {syntax}")
    ports: dict[str, int] = {}
    for part in rest.split(":"):
        name, equals, number = part.partition("=")
        if not equals:
            raise fail(f"part {part!r}", f"transport=port, as in {syntax}")
        if not is_transport(name):
            raise fail(f"transport {name!r}", "udp, tcp or quic")
        if name in ports:
            raise fail(f"transport {name!r}", "each transport at most once")
        try:
            ports[name] = parse_port(number)
        except ValueError:
            raise fail(f"{name} port {number!r}", "a port number 1..65535") from None
    return HostPorts(_normalise_host(host), **ports)


def endpoint_from_mapping(value: object, field: str = "endpoint") -> HostPorts:
    """An endpoint from its mapping form (manifest body, signer request)."""
    if not isinstance(value, Mapping):
        raise _malformed(field, "a mapping with host and ports")
    unknown = set(value) - {"host", *Transport}
    if unknown:
        raise _malformed(f"{field}.{sorted(map(str, unknown))[0]}", "host, udp, tcp or quic")
    host = value.get("host")
    if not isinstance(host, str):
        raise _malformed(f"{field}.host", "a host name or IP address")
    for transport in Transport:
        port = value.get(transport)
        if transport in value and not is_port(port):
            raise _malformed(f"{field}.{transport}", "a port number 1..65535")
    try:
        return HostPorts(host, value.get("udp"), value.get("tcp"), value.get("quic"))
    except ValueError as error:
        raise _malformed(field, str(error)) from None


# -- helpers -----------------------------------------------------------------------------------
def _parse_endpoints(value: object) -> tuple[HostPorts, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_ENDPOINTS:
        raise _malformed("endpoints", f"a list of 1..{MAX_ENDPOINTS} endpoints")
    return tuple(endpoint_from_mapping(item, f"endpoints[{i}]") for i, item in enumerate(value))


def _parse_time(value: object, field: str) -> datetime.datetime:
    if not isinstance(value, str) or not _TIME_PATTERN.fullmatch(value):
        raise _malformed(field, "a UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:
        parsed = datetime.datetime.strptime(value, TIME_FORMAT)
    except ValueError:
        raise _malformed(field, "a valid UTC time YYYY-MM-DDTHH:MM:SSZ") from None
    return parsed.replace(tzinfo=datetime.UTC)


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime(TIME_FORMAT)


def _parse_key(value: object) -> bytes:
    if isinstance(value, str) and len(value) == 44:
        try:
            return decode_key(value)
        except ValueError:
            pass
    raise _malformed("server_public_key", "a base64 WireGuard public key (32 bytes)")


def _is_bridge(text: str) -> bool:
    """`HOST:PORT` as the manifest writes it: no final dot, no leading zeros."""
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return False
    return host_problem(host) is None and format_host_port(host, port) == text


def _is_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def _normalise_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _malformed(field: str, expected: str) -> ManifestError:
    return ManifestError("malformed", f"field {field}: expected {expected}")
