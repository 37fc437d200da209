"""A throwaway PKI for the TLS tests: a CA, a server and a client certificate, as PEM files.

Keys are EC P-256 so that making them takes milliseconds. Nothing here is
fit for anything but tests on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_ONE_DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key, as PEM file paths."""

    cert: str
    key: str


@dataclass(frozen=True)
class PKI:
    """One CA and the server and client identities it signed."""

    ca: str
    server: Identity
    client: Identity


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey):
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + _ONE_DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    directory: Path,
    stem: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(f"shoal test {stem}", ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    identity = Identity(cert=str(directory / f"{stem}.pem"), key=str(directory / f"{stem}.key"))
    _write_cert(cert, Path(identity.cert))
    _write_key(key, Path(identity.key))
    return identity


def make_pki(directory: Path, name: str = "ca") -> PKI:
    """Write a fresh CA, a server identity (SAN IP 127.0.0.1, DNS localhost) and a
    client identity into `directory`; file names start with `name`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(f"shoal test {name}")
    ca_path = directory / f"{name}.pem"
    _write_cert(ca_cert, ca_path)
    san: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    server = _make_leaf(
        directory, f"{name}-server", ca_cert, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, san
    )
    client = _make_leaf(
        directory, f"{name}-client", ca_cert, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return PKI(ca=str(ca_path), server=server, client=client)
