"""The Aura CA and the server's TLS certificate.

The CA is an Ed25519 key pair: the private half (`ca.key`, PEM, mode 0600) is read only by
`aura-signer`; the public half (`ca.pub`, the raw 32-byte key in base64) goes into every
client config. The CA also signs the TLS server certificate used by the TCP and QUIC
transports: an ECDSA P-256 leaf (accepted by Python's ssl and by qh3 alike) with the
public host as subject alternative name, and `ca.crt`, a self-signed CA certificate, so TLS
clients can verify the chain.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aura_common.errors import AuraError, ConfigError
from aura_common.state.atomic import write_atomic

CA_KEY = "ca.key"
CA_PUB = "ca.pub"
CA_CERT = "ca.crt"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"

CA_CERT_DAYS = 20 * 365
# Clients pin the Aura CA rather than trusting a public root, so a long leaf lifetime costs
# little and spares operators a renewal they have no tool for.
TLS_CERT_DAYS = 10 * 365

CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Aura CA")])


# -- the CA key -----------------------------------------------------------------------------
def create_ca(key_dir: str | os.PathLike[str]) -> ed25519.Ed25519PublicKey:
    """Create the CA key pair in `key_dir` unless it exists; return the CA public key.

    Existing keys are never overwritten: a present `ca.key` is loaded instead.
    """
    key_dir = Path(key_dir)
    key_dir.mkdir(parents=True, exist_ok=True)
    if (key_dir / CA_KEY).exists():
        public = load_ca_private_key(key_dir).public_key()
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(key_dir / CA_KEY, pem, 0o600)
        public = private.public_key()
    if not (key_dir / CA_PUB).exists():
        _write_new(key_dir / CA_PUB, (public_key_to_text(public) + "\n").encode(), 0o644)
    return public


def load_ca_private_key(key_dir: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    return load_ca_private_key_file(Path(key_dir) / CA_KEY)


def load_ca_private_key_file(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(path, "", "a readable CA private key", error.strerror) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise ConfigError(path, "", "an Ed25519 private key in PEM") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(path, "", "an Ed25519 private key in PEM", type(key).__name__)
    return key


def load_ca_public_key(key_dir: str | os.PathLike[str]) -> ed25519.Ed25519PublicKey:
    path = Path(key_dir) / CA_PUB
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(path, "", "a readable CA public key", error.strerror) from None
    try:
        return public_key_from_text(text)
    except ValueError as error:
        raise ConfigError(path, "", str(error)) from None


def public_key_to_text(key: ed25519.Ed25519PublicKey) -> str:
    """The raw 32-byte key in base64: the form client configs and `ca.pub` carry."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def public_key_from_text(text: str) -> ed25519.Ed25519PublicKey:
    """Parse a CA public key in base64; ValueError says what was expected."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("expected a base64 Ed25519 public key (32 bytes)") from None
    if len(raw) != 32:
        raise ValueError(f"expected a base64 Ed25519 public key (32 bytes), got {len(raw)} bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def key_id(key: ed25519.Ed25519PublicKey) -> str:
    """A short fingerprint that names a CA in messages (not a security boundary)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# -- certificates -----------------------------------------------------------------------------
def ca_certificate(
    ca_key: ed25519.Ed25519PrivateKey, key_dir: str | os.PathLike[str]
) -> x509.Certificate:
    """Load `ca.crt`, or create it if missing. Refuses one that belongs to another CA key."""
    key_dir = Path(key_dir)
    path = key_dir / CA_CERT
    if path.exists():
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        if certificate.public_key() != ca_key.public_key():
            raise AuraError(
                f"{path}: this CA certificate belongs to a different key than {key_dir / CA_KEY};"
                " move the stale certificate away to have it recreated"
            )
        return certificate
    now = _now()
    public = ca_key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key, None)
    )
    _write_new(path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate


def issue_tls_certificate(
    ca_key: ed25519.Ed25519PrivateKey,
    hosts: Sequence[str],
    key_dir: str | os.PathLike[str],
    *,
    days: int = TLS_CERT_DAYS,
) -> x509.Certificate:
    """Issue the TLS server certificate for `hosts` (DNS names or IP addresses).

    Writes `tls.key` (P-256, mode 0600) and `tls.crt` (the leaf), creating `ca.crt` if
    missing. Replaces an older `tls.key`/`tls.crt`: whether to reissue is the caller's choice.
    """
    if not hosts:
        raise AuraError("a TLS certificate needs at least one host name or address")
    key_dir = Path(key_dir)
    ca_cert = ca_certificate(ca_key, key_dir)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, None)
    )
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(key_dir / TLS_KEY, key_pem, 0o600)
    write_atomic(key_dir / TLS_CERT, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return certificate


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as error:
        raise ConfigError(path, "", "a readable certificate", error.strerror) from None
    except ValueError:
        raise ConfigError(path, "", "a PEM certificate") from None


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with `mode` from the start, failing if it exists (keys are never clobbered)
    and never writing through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), mode)  # the umask may have narrowed it
        file.write(data)
