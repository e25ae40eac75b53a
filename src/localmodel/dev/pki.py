"""Certificates and keys for the local control plane, made with `cryptography`.

Two authorities, as in a real cluster: the serving CA signs kube-apiserver's serving certificate
(and serving certificates for local admission webhooks), the client CA signs client certificates
whose CN is the user name and whose O entries are the groups (`system:masters` = admin).
Keeping them apart means a serving certificate can never log in as a user.

Keys are ECDSA P-256: generated in microseconds and accepted by every Kubernetes component.
"""

from __future__ import annotations

import datetime
import os
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=3650)
# Issued a little in the past so a clock step between processes never makes a cert "not yet valid".
_BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key, on disk."""

    cert_file: Path
    key_file: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key_file.read_bytes()


class CertificateAuthority:
    """A self-signed CA stored as `<name>.crt` / `<name>.key` in a directory; reused if present."""

    def __init__(self, directory: Path, name: str, common_name: str) -> None:
        self.directory = directory
        self.files = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        if not (self.files.cert_file.exists() and self.files.key_file.exists()):
            key = _new_key()
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            cert = (
                _builder(subject, subject, key.public_key())
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                        key_encipherment=False, data_encipherment=False, key_agreement=False,
                        encipher_only=False, decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            _write_pair(self.files, cert, key)
        self._cert = x509.load_pem_x509_certificate(self.files.cert_pem)
        loaded = serialization.load_pem_private_key(self.files.key_pem, password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey), "CA keys made here are ECDSA"
        self._key = loaded

    @property
    def cert_file(self) -> Path:
        return self.files.cert_file

    @property
    def cert_pem(self) -> bytes:
        return self.files.cert_pem

    def issue_serving_cert(self, name: str, hosts: Sequence[str], directory: Path | None = None) -> KeyPair:
        """A TLS server certificate for `hosts` (IP addresses or DNS names), written as
        `<name>.crt` / `<name>.key`. Use it for admission webhooks the apiserver must call:
        register them with this CA's PEM as `caBundle`."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else name)])
        return self._issue(
            name, subject, ExtendedKeyUsageOID.SERVER_AUTH, directory,
            extra=[(x509.SubjectAlternativeName(sans), False)],
        )

    def issue_client_cert(
        self, name: str, user: str, groups: Sequence[str] = (), directory: Path | None = None
    ) -> KeyPair:
        """A client certificate Kubernetes reads as user `user` in `groups` (CN and O)."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        return self._issue(name, x509.Name(attributes), ExtendedKeyUsageOID.CLIENT_AUTH, directory)

    def _issue(
        self,
        name: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        directory: Path | None,
        extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> KeyPair:
        key = _new_key()
        builder = (
            _builder(subject, self._cert.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
                    content_commitment=False, data_encipherment=False, key_agreement=False,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
        )
        for extension, critical in extra:
            builder = builder.add_extension(extension, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        where = directory or self.directory
        pair = KeyPair(where / f"{name}.crt", where / f"{name}.key")
        _write_pair(pair, cert, key)
        return pair


def ensure_service_account_key(directory: Path) -> KeyPair:
    """The key pair that signs ServiceAccount tokens: `sa.key` (private) and `sa.pub` (public).
    Reused if present, so tokens issued before a restart stay valid."""
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    if not (pair.cert_file.exists() and pair.key_file.exists()):
        key = _new_key()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_private(pair.key_file, key)
        pair.cert_file.write_bytes(public)
    return pair


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _write_pair(pair: KeyPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    pair.cert_file.parent.mkdir(parents=True, exist_ok=True)
    _write_private(pair.key_file, key)
    pair.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Private keys are readable by the owner only, as kubeadm leaves them.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
