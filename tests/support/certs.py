"""A throwaway PKI for TLS tests: one CA, a loopback server certificate, a client certificate.

Made with `cryptography` at test time (EC P-256: fast to generate), so no key ever lives in the
repository and nothing expires between CI runs.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A client certificate without a CommonName: etcd's JSON gateway refuses one with a CN when
    # client-cert-auth and auth are both on (the CN could not be passed on as the identity).
    nocn_client_cert: Path | None = None
    nocn_client_key: Path | None = None


def _name(common_name: str) -> x509.Name:
    """O=confsync tests, and CN=common_name unless it is empty."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "confsync tests")]
                     + ([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
                        if common_name else []))


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_name: x509.Name, common_name: str,
           usage: list[x509.ObjectIdentifier], sans: list[x509.GeneralName],
           days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=True, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, client_name: str = "confsync-client", days: int = 2,
             server_client_auth: bool = True, server_names: tuple[str, ...] = ()) -> Pki:
    """Write ca.pem, server.pem/-key.pem (127.0.0.1, ::1, localhost; or `server_names`
    only), client.pem/-key.pem, and client-nocn.pem/-key.pem (no CommonName)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("confsync test CA")
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server, server_key = _issue(
        # clientAuth too: etcd's JSON gateway dials etcd's own gRPC with the server certificate,
        # and with --client-cert-auth that handshake needs it.
        ca_key, ca_name, "127.0.0.1",
        [ExtendedKeyUsageOID.SERVER_AUTH,
         *([ExtendedKeyUsageOID.CLIENT_AUTH] if server_client_auth else [])],
        [x509.DNSName(name) for name in server_names] or
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
         x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("localhost")], days)
    client, client_key = _issue(ca_key, ca_name, client_name, [ExtendedKeyUsageOID.CLIENT_AUTH],
                                [], days)
    nocn, nocn_key = _issue(ca_key, ca_name, "", [ExtendedKeyUsageOID.CLIENT_AUTH], [], days)
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem",
              directory / "client.pem", directory / "client-key.pem",
              directory / "client-nocn.pem", directory / "client-nocn-key.pem")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    assert pki.nocn_client_cert is not None and pki.nocn_client_key is not None
    pki.nocn_client_cert.write_bytes(nocn.public_bytes(serialization.Encoding.PEM))
    _write_key(nocn_key, pki.nocn_client_key)
    return pki
