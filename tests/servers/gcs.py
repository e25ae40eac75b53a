"""GCS servers: gcp-storage-emulator (the JSON API), and a local OAuth token endpoint.

The emulator accepts any or no credentials, so credential handling is tested against a small
token endpoint of our own: service-account files written by `write_service_account` name it as
their `token_uri`, and google-auth's real JWT-bearer flow runs against it. It refuses accounts
whose email starts with "revoked".
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ports import free_port, stop_process, wait_for_port


@dataclass(frozen=True)
class GCSEmulator:
    endpoint: str

    def settings(self, **overrides: str) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint, **overrides}

    def client(self) -> Any:
        """The official google-cloud-storage client, used by tests to create and upload."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="localmodel-tests", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})


def _emulator_binary() -> str:
    beside = Path(sys.executable).parent / "gcp-storage-emulator"
    return str(beside) if beside.exists() else "gcp-storage-emulator"


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    """gcp-storage-emulator, in memory, on a free port."""
    port = free_port()
    process = subprocess.Popen(
        [_emulator_binary(), "start", "-H", "127.0.0.1", "--port", str(port), "--in-memory",
         "-q"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        yield GCSEmulator(endpoint=f"http://127.0.0.1:{port}")
    finally:
        stop_process(process)


@dataclass
class TokenServer:
    """A local OAuth2 token endpoint for google-auth's service-account flow."""

    url: str
    issued: int = 0

    def write_service_account(self, path: Path, email: str) -> Path:
        """A service-account JSON file with a fresh RSA key whose token_uri is this server."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        path.write_text(json.dumps({
            "type": "service_account", "project_id": "localmodel-tests",
            "private_key_id": "0" * 40, "private_key": pem, "client_email": email,
            "client_id": "1", "token_uri": f"{self.url}/token",
        }))
        return path


@pytest.fixture(scope="session")
def gcs_token_server() -> Iterator[TokenServer]:
    """An OAuth token endpoint on a free port: grants tokens, refuses "revoked*" accounts."""
    state = TokenServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
            assertion = urllib.parse.parse_qs(body).get("assertion", [""])[0]
            claims = _jwt_claims(assertion)
            if str(claims.get("iss", "")).startswith("revoked"):
                self._reply(400, {"error": "invalid_grant",
                                  "error_description": "Invalid JWT Signature."})
                return
            state.issued += 1
            self._reply(200, {"access_token": f"ya29.local-{state.issued}",
                              "expires_in": 3600, "token_type": "Bearer"})

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _jwt_claims(token: str) -> dict[str, Any]:
    import base64

    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}
