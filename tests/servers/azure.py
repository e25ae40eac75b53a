"""Azure Blob server: azurite 3.35 from npm, in memory, on a free port.

hack/install-test-deps.sh installs it into $LOCALMODEL_TOOLS_DIR/npm (default
~/.cache/localmodel/npm); LOCALMODEL_AZURITE_BLOB may point at another azurite-blob binary.
Without --disableTelemetry azurite tries to reach an outside host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ports import free_port, stop_process, wait_for_port

ACCOUNT = "devstoreaccount1"
#: azurite's fixed, publicly documented development key.
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


@dataclass(frozen=True)
class Azurite:
    #: The account's blob endpoint, path style: http://127.0.0.1:PORT/devstoreaccount1
    endpoint: str
    account: str = ACCOUNT
    key: str = ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};"
                f"AccountKey={self.key};BlobEndpoint={self.endpoint};")

    def uri(self, container: str, prefix: str = "") -> str:
        return f"{self.endpoint}/{container}/{prefix}" if prefix else f"{self.endpoint}/{container}"

    def client(self) -> Any:
        """The official azure-storage-blob client, used by tests to create and upload."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


def azurite_binary() -> str:
    """azurite-blob from LOCALMODEL_AZURITE_BLOB, the tools cache, or PATH."""
    explicit = os.environ.get("LOCALMODEL_AZURITE_BLOB")
    if explicit:
        return explicit
    tools = Path(os.environ.get("LOCALMODEL_TOOLS_DIR", Path.home() / ".cache" / "localmodel"))
    cached = tools / "npm" / "node_modules" / ".bin" / "azurite-blob"
    if cached.exists():
        return str(cached)
    found = shutil.which("azurite-blob")
    if not found:
        raise RuntimeError("azurite-blob not installed: run hack/install-test-deps.sh")
    return found


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """azurite's Blob service on 127.0.0.1, in memory, accepting the development account."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("azurite")  # its debug log and config land in the cwd
    process = subprocess.Popen(
        [azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port),
         "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=workdir,
    )
    try:
        wait_for_port(port, process=process, timeout=60)
        yield Azurite(endpoint=f"http://127.0.0.1:{port}/{ACCOUNT}")
    finally:
        stop_process(process)
