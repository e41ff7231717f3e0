"""The consortium's TLS material: a CA and the SuperLink's server certificate.

Built with ``cryptography``'s X.509 API: ECDSA P-384 keys, a self-signed CA
(path length 0) and a server certificate whose subject alternative names are
the host names and IP addresses the SuperLink is reached at. SuperNodes and
the ``flwr`` CLI verify the SuperLink against the CA certificate.
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

from common.keys import KeyFileError, load_ec_key, write_private_key

__all__ = ["TlsFiles", "issue_server_certificate", "make_ca", "write_tls"]

CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate and the SuperLink's certificate and key."""

    ca_certificate: Path
    certificate: Path
    private_key: Path

    def check(self) -> None:
        """Fail clearly if a file is missing or not what it should be."""
        for path in (self.ca_certificate, self.certificate):
            if not path.is_file():
                raise KeyFileError(f"no TLS certificate at {path}")
            try:
                x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError as err:
                raise KeyFileError(f"{path} is not a PEM certificate: {err}") from err
        load_ec_key(self.private_key)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(organisation: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA for the consortium (ECDSA P-384, may sign leaf certificates only)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(f"{organisation} CA", organisation)
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, certificate


def _alternative_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host) or "/" in host or ":" in host:
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return x509.DNSName(host)


def issue_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_certificate: x509.Certificate,
    hosts: list[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the SuperLink, valid for every name in ``hosts``."""
    if not hosts:
        raise ValueError("the SuperLink certificate needs at least one host name or IP address")
    names = [_alternative_name(h) for h in hosts]
    key = ec.generate_private_key(ec.SECP384R1())
    organisation = ca_certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0], str(organisation[0].value) if organisation else "FedCommons"))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, certificate


def write_tls(
    folder: Path, organisation: str, hosts: list[str], *, passphrase: str | None = None
) -> TlsFiles:
    """Create ``folder`` with ``ca.pem``, ``ca-key.pem``, ``superlink.pem``, ``superlink-key.pem``.

    The CA key is encrypted with ``passphrase`` if one is given; the
    SuperLink's key never is, because the SuperLink reads it unattended.
    """
    ca_key, ca_certificate = make_ca(organisation)
    server_key, server_certificate = issue_server_certificate(ca_key, ca_certificate, hosts)
    files = TlsFiles(folder / "ca.pem", folder / "superlink.pem", folder / "superlink-key.pem")
    write_private_key(folder / "ca-key.pem", ca_key, passphrase=passphrase)
    write_private_key(files.private_key, server_key)
    files.ca_certificate.write_bytes(ca_certificate.public_bytes(serialization.Encoding.PEM))
    files.certificate.write_bytes(server_certificate.public_bytes(serialization.Encoding.PEM))
    return files
