"""The Aura CA and the TLS server certificate it issues, checked by real TLS stacks."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from qh3.quic.connection import X509Certificate
from qh3.tls import AlertBadCertificate, verify_certificate

from aura_common.errors import AuraError
from aura_common.pki import ca


def test_create_ca_writes_private_key_0600_and_never_overwrites(tmp_path: Path) -> None:
    public = ca.create_ca(tmp_path)
    key_file = tmp_path / "ca.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    before = key_file.read_bytes()
    assert ca.create_ca(tmp_path) == public
    assert key_file.read_bytes() == before
    assert ca.load_ca_public_key(tmp_path) == public
    assert ca.load_ca_private_key(tmp_path).public_key() == public
    assert len((tmp_path / "ca.pub").read_text().strip()) == 44


def test_public_key_text_round_trip_and_errors() -> None:
    text = "A" * 43 + "="
    assert ca.public_key_to_text(ca.public_key_from_text(text)) == text
    with pytest.raises(ValueError, match="32 bytes"):
        ca.public_key_from_text("AAAA")
    with pytest.raises(ValueError, match="base64"):
        ca.public_key_from_text("not base64!")


def test_tls_certificate_is_p256_signed_by_ca(tmp_path: Path) -> None:
    ca.create_ca(tmp_path)
    ca_key = ca.load_ca_private_key(tmp_path)
    leaf = ca.issue_tls_certificate(ca_key, ["vpn.example.com", "192.0.2.7"], tmp_path)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    ca_cert = ca.load_certificate(tmp_path / "ca.crt")
    leaf.verify_directly_issued_by(ca_cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


def test_ca_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    ca.create_ca(tmp_path)
    ca.issue_tls_certificate(ca.load_ca_private_key(tmp_path), ["a.example"], tmp_path)
    other = tmp_path / "other"
    ca.create_ca(other)
    (other / "ca.crt").write_bytes((tmp_path / "ca.crt").read_bytes())
    with pytest.raises(AuraError, match="different key"):
        ca.issue_tls_certificate(ca.load_ca_private_key(other), ["a.example"], other)


@pytest.mark.parametrize("host", ["vpn.example.com", "127.0.0.1"])
def test_qh3_accepts_the_chain(tmp_path: Path, host: str) -> None:
    ca.create_ca(tmp_path)
    issued = ca.issue_tls_certificate(ca.load_ca_private_key(tmp_path), [host], tmp_path)
    leaf = X509Certificate(issued.public_bytes(Encoding.DER))
    cadata = (tmp_path / "ca.crt").read_bytes()
    verify_certificate(leaf, server_name=host, cadata=cadata)
    with pytest.raises(AlertBadCertificate):
        verify_certificate(leaf, server_name="other.example", cadata=cadata)


@pytest.mark.parametrize("host", ["vpn.example.com", "127.0.0.1"])
def test_python_ssl_tls13_handshake_verifies_against_ca(tmp_path: Path, host: str) -> None:
    ca.create_ca(tmp_path)
    ca.issue_tls_certificate(ca.load_ca_private_key(tmp_path), [host], tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_3
    server_context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    client_context.minimum_version = ssl.TLSVersion.TLSv1_3

    server_sock, client_sock = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                tls.sendall(tls.recv(5))
        except BaseException as error:  # reported to the main thread
            errors.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    with client_context.wrap_socket(client_sock, server_hostname=host) as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"hello")
        assert tls.recv(5) == b"hello"
    thread.join(timeout=10)
    assert not errors
