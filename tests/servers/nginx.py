"""nginx serving a directory over HTTP and HTTPS, with a JSON access log the tests can read.

Fixture `nginx` (session): one server for the whole session. Tests write files below
`nginx.root / <unique dir>` and fetch them from `nginx.http_url` / `nginx.https_url`.

Special locations, for error-path tests:
    /forbidden/...   always 403
    /private/...     401 unless the request carries `Authorization: Bearer let-me-in`
Everything else is static files with Range, ETag and Content-Length, as nginx serves them.
`proxy_url` is a forward proxy (plain http) in front of the same server.

The access log records per request the URI, status, Range header and `$bytes_sent`, so a test
can count on the server side how many bytes a client really pulled (e.g. across a crash).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import ports, tls

PRIVATE_TOKEN = "let-me-in"

_CONF = """\
{user}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{
        application/octet-stream bin safetensors gguf pt;
        application/json json;
        text/plain txt;
        application/zip zip;
        application/x-tar tar;
        application/gzip gz tgz;
    }}
    default_type application/octet-stream;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    log_format counting escape=json
        '{{"uri":"$uri","method":"$request_method","status":$status,'
        '"range":"$http_range","bytes_sent":$bytes_sent,"body_bytes_sent":$body_bytes_sent}}';
    log_format proxied escape=json
        '{{"uri":"proxy:$uri","method":"$request_method","status":$status,'
        '"range":"$http_range","bytes_sent":$bytes_sent,"body_bytes_sent":$body_bytes_sent}}';
    access_log {work}/access.log counting;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{http_port};
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
        location /forbidden/ {{ return 403; }}
        location /private/ {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
        }}
    }}
    # A forward proxy for plain http (absolute-URI requests), logging with a "proxy:" prefix.
    server {{
        listen 127.0.0.1:{proxy_port};
        access_log {work}/access.log proxied;
        location / {{ proxy_pass http://$http_host; }}
    }}
}}
"""


@dataclass(frozen=True)
class AccessRecord:
    uri: str
    method: str
    status: int
    range: str
    bytes_sent: int
    body_bytes_sent: int


@dataclass
class NginxServer:
    root: Path
    http_url: str
    https_url: str
    #: A forward proxy for plain http; its requests show in `records("proxy:/...")`.
    proxy_url: str
    ca_bundle: Path
    access_log: Path
    process: subprocess.Popen[bytes]

    def records(self, uri_prefix: str = "/") -> list[AccessRecord]:
        """Access-log records whose URI starts with `uri_prefix`, in log order."""
        found = []
        for line in self.access_log.read_text().splitlines():
            record = AccessRecord(**json.loads(line))
            if record.uri.startswith(uri_prefix):
                found.append(record)
        return found

    def body_bytes(self, uri_prefix: str = "/") -> int:
        """Body bytes nginx has sent for URIs below `uri_prefix`."""
        return sum(record.body_bytes_sent for record in self.records(uri_prefix))


def start_nginx(root: Path, work: Path) -> NginxServer:
    """Start nginx on two free ports (HTTP and HTTPS) serving `root`."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.fail("nginx is not installed: run hack/install-test-deps.sh")
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    certificates = tls.make_certificates(work / "tls")
    http_port, https_port, proxy_port = ports.free_port(), ports.free_port(), ports.free_port()
    conf = work / "nginx.conf"
    conf.write_text(_CONF.format(
        # As root, nginx would switch workers to `nobody`, who cannot read pytest's 0700 dirs.
        user="user root;" if os.geteuid() == 0 else "",
        work=work, root=root, http_port=http_port, https_port=https_port, proxy_port=proxy_port,
        cert=certificates.server_cert, key=certificates.server_key, token=PRIVATE_TOKEN,
    ))
    (work / "access.log").touch()
    process = subprocess.Popen(
        [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log"),
         "-g", "daemon off;"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ports.wait_for_port(http_port, process=process)
        ports.wait_for_port(https_port, process=process)
        ports.wait_for_port(proxy_port, process=process)
    except Exception:
        ports.stop_process(process)
        raise
    return NginxServer(
        root=root,
        http_url=f"http://127.0.0.1:{http_port}",
        https_url=f"https://127.0.0.1:{https_port}",
        proxy_url=f"http://127.0.0.1:{proxy_port}",
        ca_bundle=certificates.ca_bundle,
        access_log=work / "access.log",
        process=process,
    )


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    base = tmp_path_factory.mktemp("nginx")
    server = start_nginx(base / "root", base / "work")
    try:
        yield server
    finally:
        ports.stop_process(server.process)
