"""Certificates the control plane and its tests rely on: identities, usages, trust chains."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localmodel.dev.kubeconfig import write_kubeconfig
from localmodel.dev.pki import CertificateAuthority, ensure_service_account_key


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_client_cert_names_user_and_groups_and_chains_to_its_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "client-ca", "test-client-ca")
    pair = ca.issue_client_cert("alice", "alice", ["team-a", "system:masters"])
    cert = _load(pair.cert_file)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["team-a", "system:masters"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(_load(ca.cert_file))


def test_serving_cert_covers_ips_and_names(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "server-ca", "test-server-ca")
    cert = _load(ca.issue_serving_cert("web", ["127.0.0.1", "localhost"]).cert_file)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(_load(ca.cert_file))


def test_ca_is_reused_from_disk(tmp_path: Path) -> None:
    first = CertificateAuthority(tmp_path, "ca", "one").cert_pem
    assert CertificateAuthority(tmp_path, "ca", "two").cert_pem == first


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path, "ca", "ca")
    pair = ensure_service_account_key(tmp_path)
    assert ca.files.key_file.stat().st_mode & 0o777 == 0o600
    assert pair.key_file.stat().st_mode & 0o777 == 0o600


def test_service_account_key_pair_matches_and_is_kept(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pair = ensure_service_account_key(tmp_path)
    private = serialization.load_pem_private_key(pair.key_pem, password=None)
    public = serialization.load_pem_public_key(pair.cert_pem)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    assert ensure_service_account_key(tmp_path).key_pem == pair.key_pem


def test_kubeconfig_embeds_the_credential(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "kc", server="https://127.0.0.1:1", server_ca_pem=b"CA", user="u", token="secret-token"
    )
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["certificate-authority-data"] == base64.b64encode(b"CA").decode()
    assert config["users"][0]["user"] == {"token": "secret-token"}
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "credential",
    [{}, {"token": "t", "client_cert_pem": b"c", "client_key_pem": b"k"}, {"client_cert_pem": b"c"}],
)
def test_kubeconfig_needs_exactly_one_credential(tmp_path: Path, credential: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        write_kubeconfig(tmp_path / "kc", server="https://x", server_ca_pem=b"CA", user="u", **credential)  # type: ignore[arg-type]
