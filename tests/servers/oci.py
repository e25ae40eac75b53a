"""CNCF distribution's `registry`, with the real clients `oras` and `crane` that push to it, all
built from Go modules by hack/build-oci-tools.sh (cached; `make test-deps` builds them).

Fixtures (session):
    oci_registry          anonymous registry on 127.0.0.1 (plain HTTP: a loopback registry)
    oci_tls_registry      anonymous, HTTPS with a certificate of the tests' CA
    oci_basic_registry    htpasswd (bcrypt) Basic auth; user `puller`, password `pull-secret`
    oci_token_registry    token auth: a small token server in this module issues ES256 JWTs
                          (x5c-signed, the registry trusts the certificate) for `puller`
    oci_redirect_registry anonymous, blobs redirected (the registry's `redirect` storage
                          middleware) to a second server on 127.0.0.2 that serves the stored
                          blobs with Range and records the headers it was sent

Each `Registry` pushes with the real clients: `registry.oras(...)`, `registry.crane(...)`, with
a DOCKER_CONFIG holding its credentials (the same config `localmodel fetch` reads).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.servers import ports

REPO_ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "puller", "pull-secret"


@pytest.fixture(scope="session")
def oci_tools() -> Path:
    """The folder holding registry, oras and crane (built once, then cached)."""
    result = subprocess.run(["bash", str(REPO_ROOT / "hack" / "build-oci-tools.sh")],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"building the OCI tools failed:\n{result.stderr[-3000:]}")
    return Path(result.stdout.strip())


@dataclass
class Registry:
    host: str
    work: Path
    tools: Path
    data: Path
    credentials: tuple[str, str] | None = None
    #: The CA of a TLS registry (None: plain HTTP).
    ca_bundle: Path | None = None
    docker_config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.docker_config = self.work / "docker"
        self.docker_config.mkdir(exist_ok=True)
        auths = {}
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            auths[self.host] = {"auth": token}
        (self.docker_config / "config.json").write_text(json.dumps({"auths": auths}))

    @property
    def auth_setting(self) -> str:
        return (self.docker_config / "config.json").read_text()

    def _run(self, tool: str, args: list[str], cwd: Path | None) -> str:
        env = {**os.environ, "DOCKER_CONFIG": str(self.docker_config), "HOME": str(self.work)}
        result = subprocess.run([str(self.tools / tool), *args], cwd=cwd, env=env,
                                capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stderr[-2000:]}")
        return result.stdout

    def oras(self, *args: str, cwd: Path | None = None) -> str:
        transport = ["--ca-file", str(self.ca_bundle)] if self.ca_bundle else ["--plain-http"]
        return self._run("oras", [*args, *transport], cwd)

    def crane(self, *args: str, cwd: Path | None = None) -> str:
        return self._run("crane", [*args, "--insecure"], cwd)

    def digest(self, reference: str) -> str:
        # oras, not crane: crane refuses a token realm on a loopback address (SSRF guard).
        return self.oras("resolve", f"{self.host}/{reference}").strip()

    def blob_file(self, digest: str) -> Path:
        """Where the registry's filesystem driver keeps a blob (to damage it on purpose)."""
        hexdigest = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def _start_registry(tools: Path, work: Path, auth: str = "", middleware: str = "",
                    tls: str = "") -> tuple[subprocess.Popen[bytes], str, Path]:
    port = ports.free_port()
    data = work / "data"
    config = work / "config.yml"
    config.write_text(f"""\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
{middleware}
http:
  addr: 127.0.0.1:{port}
{tls}{auth}
""")
    log = open(work / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([str(tools / "registry"), "serve", str(config)], stdout=log,
                               stderr=subprocess.STDOUT)
    ports.wait_for_port(port, process=process)
    return process, f"127.0.0.1:{port}", data


@pytest.fixture(scope="session")
def oci_registry(oci_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("oci-anonymous")
    process, host, data = _start_registry(oci_tools, work)
    try:
        yield Registry(host, work, oci_tools, data)
    finally:
        ports.stop_process(process)


@pytest.fixture(scope="session")
def oci_tls_registry(oci_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTPS with a certificate from the tests' own CA (tests/servers/tls.py)."""
    from tests.servers.tls import make_certificates

    work = tmp_path_factory.mktemp("oci-tls")
    certificates = make_certificates(work / "certs")
    tls = (f"  tls:\n    certificate: {certificates.server_cert}\n    key: {certificates.server_key}\n")
    process, host, data = _start_registry(oci_tools, work, tls=tls)
    try:
        yield Registry(host, work, oci_tools, data, ca_bundle=certificates.ca_bundle)
    finally:
        ports.stop_process(process)


@pytest.fixture(scope="session")
def oci_basic_registry(oci_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    work = tmp_path_factory.mktemp("oci-basic")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True,
                              check=True).stdout
    (work / "htpasswd").write_text(htpasswd)
    auth = f"auth:\n  htpasswd:\n    realm: localmodel-tests\n    path: {work / 'htpasswd'}\n"
    process, host, data = _start_registry(oci_tools, work, auth)
    try:
        yield Registry(host, work, oci_tools, data, credentials=(USER, PASSWORD))
    finally:
        ports.stop_process(process)


# -- token auth ------------------------------------------------------------------------------

def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class TokenServer:
    """Docker's token protocol: GET /token?service=&scope= with Basic credentials, answered
    with an ES256 JWT granting the scope's actions to `puller` (anonymous: no access)."""

    def __init__(self, work: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localmodel test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(hours=1))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .sign(self.key, hashes.SHA256()))
        self.cert_file = work / "token-cert.pem"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, str]] = []
        self.port = ports.free_port()
        self.lifetime = 300
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                server.requests.append({**query, "authorization": self.headers.get("Authorization", "")})
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                given = self.headers.get("Authorization")
                if given and given != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query, authenticated=bool(given))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, query: dict[str, str], *, authenticated: bool) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        match = re.fullmatch(r"repository:([^:]+):(.+)", query.get("scope", ""))
        if match and authenticated:
            access.append({"type": "repository", "name": match.group(1),
                           "actions": match.group(2).split(",")})
        now = int(time.time())
        header = {"alg": "ES256", "typ": "JWT",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        claims = {"iss": "localmodel-tests", "sub": USER if authenticated else "", "aud": "localmodel-registry",
                  "exp": now + self.lifetime, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
                  "access": access}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def oci_token_registry(oci_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, TokenServer]]:
    work = tmp_path_factory.mktemp("oci-token")
    tokens = TokenServer(work)
    auth = (f"auth:\n  token:\n    realm: http://127.0.0.1:{tokens.port}/token\n"
            f"    service: localmodel-registry\n    issuer: localmodel-tests\n"
            f"    rootcertbundle: {tokens.cert_file}\n")
    process, host, data = _start_registry(oci_tools, work, auth)
    try:
        yield Registry(host, work, oci_tools, data, credentials=(USER, PASSWORD)), tokens
    finally:
        ports.stop_process(process)
        tokens.close()


# -- blob redirects --------------------------------------------------------------------------

class BlobStore:
    """Object storage stand-in on 127.0.0.2: serves the registry's stored files by path, with
    Range, and records every request's headers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[dict[str, str]] = []
        self.port = ports.free_port()
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:  # noqa: N802
                store.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                path = store.root / urlsplit(self.path).path.lstrip("/")
                if ".." in self.path or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
                if match:
                    start, end = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end + 1])

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def oci_redirect_registry(oci_tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, BlobStore]]:
    work = tmp_path_factory.mktemp("oci-redirect")
    store = BlobStore(work / "data")
    middleware = (f"middleware:\n  storage:\n    - name: redirect\n      options:\n"
                  f"        baseurl: http://127.0.0.2:{store.port}/\n")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True,
                              check=True).stdout
    (work / "htpasswd").write_text(htpasswd)
    auth = f"auth:\n  htpasswd:\n    realm: localmodel-tests\n    path: {work / 'htpasswd'}\n"
    process, host, data = _start_registry(oci_tools, work, auth, middleware)
    try:
        yield Registry(host, work, oci_tools, data, credentials=(USER, PASSWORD)), store
    finally:
        ports.stop_process(process)
        store.close()
