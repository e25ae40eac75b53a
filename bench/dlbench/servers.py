"""The servers the benchmark downloads from, each in its own process so its CPU time is not
counted as the client's: nginx (HTTP), `rclone serve s3` (S3 with MD5 ETags), nginx in front of
rclone (S3 with full-object CRC64NVME checksums) and the project's local Hugging Face endpoint
(`python -m tests.servers.hf`).

S3 with checksums: S3 gives every object a full-object CRC64NVME since 2025, so that is what a
node downloading from S3 sees. moto stores such checksums but copies the whole object on every
ranged GET (5-35 server CPU-s/GB; ~0.3 GB/s); rclone streams at GB/s but keeps no checksums
(only MD5 ETags). So `s3_checksums` puts nginx in front: the listing comes from rclone (real
ListObjectsV2 paging and encoding) with `ChecksumAlgorithm` added, HEAD and GET are served by
nginx from the same files with `x-amz-checksum-crc64nvme` (computed here once, with awscrt)
and `x-amz-checksum-type: FULL_OBJECT`. nginx serves objects with its own ETags, so the
listing's ETags are rewritten to them (conditional reads with If-Match keep working; those
ETags are not MD5s, so this source has no checkable ETag beside the CRC). Nothing checks
signatures there: every client signs anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dlbench.model import BUCKET, PREFIX, Model

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from tests.servers.ports import free_port, stop_process, wait_for_port  # noqa: E402
from tests.servers.s3 import rclone_binary  # noqa: E402

S3_KEY, S3_SECRET, S3_REGION = "bench-access-key", "bench-secret-key", "us-east-1"
HF_REPO = "bench/model"

# What both nginx configurations share (str.format templates). Every type is
# application/octet-stream: KServe's HTTP downloader refuses anything else (config.json as
# application/json included). No access log: it would only cost CPU.
_NGINX_HTTP_HEAD = """\
{user}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
"""

_NGINX_CONF = _NGINX_HTTP_HEAD + """\
    server {{
        listen 127.0.0.1:{port};
        root {root};
        {limit}
    }}
}}
"""


@dataclass
class Server:
    """A running server: where it is, and the processes whose CPU time is the server's."""

    name: str
    url: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def file_urls(server: Server, model: Model) -> list[tuple[str, str]]:
    """(URL, relative path) of every model file on the nginx server."""
    return [(f"{server.url}/{PREFIX}/{urllib.parse.quote(path)}", path) for path in model.files]


@contextmanager
def nginx(model: Model, work: Path, per_connection: str | None = None) -> Iterator[Server]:
    """nginx over the bucket folder. `per_connection` (nginx size, e.g. "64m") caps each
    connection's rate, like the per-flow throughput of a real object store or CDN (tens to
    ~100 MB/s per connection): the network, not the CPU, is then the bottleneck."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(
        user="user root;" if os.geteuid() == 0 else "", work=work, port=port,
        root=model.root / BUCKET,
        limit=f"limit_rate {per_connection};" if per_connection else ""))
    process = subprocess.Popen([binary, "-p", str(work), "-c", str(conf), "-e",
                                str(work / "error.log"), "-g", "daemon off;"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        yield Server("nginx" if per_connection is None else f"nginx {per_connection}/connection",
                     f"http://127.0.0.1:{port}", [process])
    finally:
        stop_process(process)


@contextmanager
def rclone_s3(model: Model) -> Iterator[Server]:
    """`rclone serve s3` over the model root (bucket "bucket"). rclone computes an object's
    MD5 ETag on first access and keeps it with the directory entry: a long --dir-cache-time
    and a warm-up listing keep that out of the timed runs."""
    port = free_port()
    process = subprocess.Popen(
        [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{S3_KEY},{S3_SECRET}", "--dir-cache-time", "1000h",
         "--log-level", "ERROR", "--config", os.devnull, str(model.root)],
        stdin=subprocess.DEVNULL)
    try:
        wait_for_port(port, process=process)
        server = Server("rclone", f"http://127.0.0.1:{port}", [process])
        _warm_rclone(server)
        yield server
    finally:
        stop_process(process)


def s3_settings(server: Server) -> dict[str, str]:
    """KServe-style S3 variables (kserve-storage reads only AWS_ENDPOINT_URL)."""
    return {"AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION}


def _warm_rclone(server: Server) -> None:
    from localmodel.sources.s3 import S3Source

    source = S3Source(f"s3://{BUCKET}/{PREFIX}", s3_settings(server))
    try:
        started = time.monotonic()
        source.list_files()  # ETags of every object: rclone hashes each file once here
        source.list_files()
        print(f"# rclone: object ETags computed in {time.monotonic() - started:.1f} s",
              flush=True)
    finally:
        source.close()


_S3_FRONT_CONF = _NGINX_HTTP_HEAD + """\
    map $uri $crc64nvme {{
        default "";
{checksums}
    }}
    upstream rclone {{ server {rclone}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # ListObjectsV2 (GET /bucket?list-type=2...): rclone's answer, with checksums named
        location ~ ^/[^/]+/?$ {{
            proxy_pass http://rclone;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header Accept-Encoding "";
            sub_filter '<ETag>' '<ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><ChecksumType>FULL_OBJECT</ChecksumType><ETag>';
{etags}
            sub_filter_once off;
            sub_filter_types application/xml text/xml;
        }}
        # HEAD and GET of an object: the file, with its checksum
        location / {{
            add_header x-amz-checksum-crc64nvme $crc64nvme always;
            add_header x-amz-checksum-type FULL_OBJECT always;
        }}
    }}
}}
"""


def _object_facts(model: Model) -> list[tuple[str, str, str, str]]:
    """(URI path, base64 CRC64NVME, rclone's MD5 ETag, nginx's ETag) of every object, cached
    beside the model (computing them reads the model once)."""
    import base64
    import hashlib
    import json

    from awscrt import checksums

    cache = model.root / "object-facts.json"
    bucket = model.root / BUCKET
    stats = {str(p.relative_to(bucket)): [p.stat().st_size, int(p.stat().st_mtime)]
             for p in sorted(bucket.rglob("*")) if p.is_file()}
    try:
        cached = json.loads(cache.read_text())
        if cached["stats"] == stats:
            return [tuple(row) for row in cached["facts"]]  # type: ignore[misc]
    except (OSError, ValueError, KeyError):
        pass
    facts = []
    for relative, (size, mtime) in stats.items():
        crc, md5 = 0, hashlib.md5(usedforsecurity=False)
        with open(bucket / relative, "rb") as handle:
            while block := handle.read(8 << 20):
                crc = checksums.crc64nvme(block, crc)
                md5.update(block)
        facts.append((f"/{BUCKET}/{relative}", base64.b64encode(crc.to_bytes(8, "big")).decode(),
                      md5.hexdigest(), f"{mtime:x}-{size:x}"))
    cache.write_text(json.dumps({"stats": stats, "facts": facts}))
    return facts


@contextmanager
def s3_checksums(model: Model, work: Path) -> Iterator[Server]:
    """S3 as S3 is today: every object with a full-object CRC64NVME (see the module docstring)."""
    facts = _object_facts(model)
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    work.mkdir(parents=True, exist_ok=True)
    with rclone_s3(model) as listing:
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(_S3_FRONT_CONF.format(
            user="user root;" if os.geteuid() == 0 else "", work=work, port=port,
            root=model.root, rclone=listing.url.removeprefix("http://"),
            checksums="\n".join(f'        "{path}" "{crc}";' for path, crc, _, _ in facts),
            etags="\n".join(f"            sub_filter '{md5}' '{etag}';" for _, _, md5, etag in facts)))
        process = subprocess.Popen([binary, "-p", str(work), "-c", str(conf), "-e",
                                    str(work / "error.log"), "-g", "daemon off;"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, process=process)
            yield Server("nginx+rclone (CRC64NVME)", f"http://127.0.0.1:{port}",
                         [process, *listing.processes])
        finally:
            stop_process(process)


@contextmanager
def hf_hub(model: Model) -> Iterator[Server]:
    """The local HF endpoint serving the model folder as repo bench/model (every file LFS,
    sent with sendfile after a 302 to the "CDN" host, like the Hub)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.hf", "--repo", f"{HF_REPO}={model.folder}"],
        stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        if not url:
            raise RuntimeError("the local HF endpoint did not start")
        yield Server("hf", url, [process])  # type: ignore[list-item]
    finally:
        stop_process(process)  # type: ignore[arg-type]
