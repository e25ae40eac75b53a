"""The engine against real HTTP servers: nginx for the normal paths, the fault server for
corruption, retries, timeouts and servers that ignore Range."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest

from localmodel.errors import (
    IntegrityError,
    InvalidURIError,
    PermanentError,
    SourceAuthError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from localmodel.fetch import BackoffPolicy, FetchOptions, Layout, download, read_manifest
from localmodel.fetch.progress import Progress
from tests.fetch.models import SMALL_CHUNKS, content, local_digest, read_tree
from tests.servers.http import FaultServer
from tests.servers.nginx import PRIVATE_TOKEN, NginxServer

FAST_RETRIES = BackoffPolicy(max_retries=3, base_delay=0.01, max_delay=0.05)
OPTIONS = FetchOptions(concurrency=4, chunk_size=64 * 1024, checkpoint_size=64 * 1024,
                       fsync=False, backoff=FAST_RETRIES)


def _publish(nginx: NginxServer, name: str, data: bytes, folder: str = "") -> str:
    folder = folder or uuid.uuid4().hex
    path = nginx.root / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"/{folder}/{name}"


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_file_larger_than_a_chunk(nginx: NginxServer, tmp_path: Path, scheme: str) -> None:
    data = content("big", 1024 * 1024 + 3)
    path = _publish(nginx, "weights.safetensors", data)
    base = nginx.http_url if scheme == "http" else nginx.https_url
    settings = {"LOCALMODEL_HTTP_CA_BUNDLE": str(nginx.ca_bundle)}
    manifest = download(base + path, tmp_path / "m", settings=settings, options=OPTIONS)
    assert read_tree(tmp_path / "m") == {"weights.safetensors": data}
    assert manifest.files[0].scrub_digest == local_digest(data)
    ranged = [r for r in nginx.records(path) if r.method == "GET"]
    assert len(ranged) == 17 and all(r.status == 206 for r in ranged)
    assert sum(r.body_bytes_sent for r in ranged) == len(data)


def test_empty_file(nginx: NginxServer, tmp_path: Path) -> None:
    path = _publish(nginx, "empty.bin", b"")
    manifest = download(nginx.http_url + path, tmp_path / "m", options=OPTIONS)
    assert read_tree(tmp_path / "m") == {"empty.bin": b""}
    assert manifest.files[0].scrub_digest == local_digest(b"")


def test_https_needs_a_trusted_ca(nginx: NginxServer, tmp_path: Path) -> None:
    path = _publish(nginx, "w.bin", b"secret weights")
    with pytest.raises(PermanentError, match="TLS"):
        download(nginx.https_url + path, tmp_path / "m", options=OPTIONS)
    download(nginx.https_url + path, tmp_path / "m", options=OPTIONS,
             settings={"LOCALMODEL_HTTP_VERIFY": "false"})
    assert (tmp_path / "m" / "w.bin").read_bytes() == b"secret weights"


def test_status_errors_are_clear(nginx: NginxServer, tmp_path: Path) -> None:
    with pytest.raises(SourceAuthError, match="403"):
        download(nginx.http_url + "/forbidden/w.bin", tmp_path / "a", options=OPTIONS)
    with pytest.raises(SourceNotFoundError, match="404"):
        download(nginx.http_url + "/nothing/here.bin", tmp_path / "b", options=OPTIONS)
    with pytest.raises(InvalidURIError, match="no file name"):
        download(nginx.http_url + "/", tmp_path / "c", options=OPTIONS)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_host_headers_setting_authenticates(nginx: NginxServer, tmp_path: Path) -> None:
    path = _publish(nginx, "w.bin", b"private weights", folder="private/" + uuid.uuid4().hex)
    with pytest.raises(SourceAuthError, match="401"):
        download(nginx.http_url + path, tmp_path / "a", options=OPTIONS)
    settings = {"127.0.0.1-headers": f'{{"Authorization": "Bearer {PRIVATE_TOKEN}"}}'}
    download(nginx.http_url + path, tmp_path / "b", settings=settings, options=OPTIONS)
    assert (tmp_path / "b" / "w.bin").read_bytes() == b"private weights"


def test_flipped_byte_is_caught_and_nothing_published(fault_server: FaultServer,
                                                      tmp_path: Path) -> None:
    data = content("flip", 500_000)
    url = fault_server.add("/flip/w.bin", data, flip_at=300_001, digest=True)
    dest = tmp_path / "m"
    with pytest.raises(IntegrityError, match="sha256"):
        download(url, dest, options=OPTIONS)
    layout = Layout.beside(dest)
    assert not dest.exists()
    assert read_manifest(layout) is None
    assert not layout.staging.exists()  # bad bytes are not kept for a resume


def test_digest_header_is_checked_when_right(fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("digest", 300_000)
    url = fault_server.add("/digest/w.bin", data, digest=True)
    manifest = download(url, tmp_path / "m", options=OPTIONS)
    assert manifest.files[0].digest_checked
    assert manifest.files[0].digest is not None
    assert manifest.files[0].digest.value == hashlib.sha256(data).hexdigest()


def test_transient_errors_are_retried(fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("retry", 100_000)
    url = fault_server.add("/retry/w.bin", data, fail_times=3, fail_status=503, retry_after="0")
    options = FetchOptions(concurrency=1, chunk_size=64 * 1024, fsync=False,
                           backoff=BackoffPolicy(max_retries=5, base_delay=0.01))
    download(url, tmp_path / "m", options=options)
    assert read_tree(tmp_path / "m") == {"w.bin": data}
    # Three failed HEADs, the HEAD that worked, then two ranged GETs.
    assert fault_server.requests("/retry/w.bin") == 3 + 1 + 2
    url = fault_server.add("/retry/x.bin", data, fail_times=1000, fail_status=429)
    with pytest.raises(SourceUnavailableError, match="429"):
        download(url, tmp_path / "x", options=options)
    assert fault_server.requests("/retry/x.bin") == 1 + 5


def test_persistent_failure_gives_up_after_the_budget(fault_server: FaultServer,
                                                      tmp_path: Path) -> None:
    data = content("down", 100_000)
    url = fault_server.add("/down/w.bin", data, drop_after=10, drop_times=1000)
    with pytest.raises(SourceUnavailableError):
        download(url, tmp_path / "m", options=OPTIONS)
    assert not (tmp_path / "m").exists()


def test_dropped_connection_resumes_from_the_last_byte(fault_server: FaultServer,
                                                       tmp_path: Path) -> None:
    data = content("drop", 400_000)
    url = fault_server.add("/drop/w.bin", data, drop_after=100_000, drop_times=1)
    options = FetchOptions(concurrency=1, chunk_size=1024 * 1024, fsync=False, backoff=FAST_RETRIES)
    download(url, tmp_path / "m", options=options)
    assert read_tree(tmp_path / "m") == {"w.bin": data}
    assert fault_server.served("/drop/w.bin") == [(0, 100_000), (100_000, 400_000)]


def test_read_timeout_is_a_transient_error(fault_server: FaultServer, tmp_path: Path) -> None:
    url = fault_server.add("/slow/w.bin", b"x" * 1000, stall_seconds=1.5)
    settings = {"LOCALMODEL_HTTP_READ_TIMEOUT": "0.2"}
    options = FetchOptions(fsync=False, backoff=BackoffPolicy(max_retries=1, base_delay=0.01))
    with pytest.raises(SourceUnavailableError, match="Timeout|timed out"):
        download(url, tmp_path / "m", settings=settings, options=options)


def test_server_without_range_support(fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("norange", 300_000)
    url = fault_server.add("/norange/w.bin", data, ranges=False)
    download(url, tmp_path / "m", options=OPTIONS)
    assert read_tree(tmp_path / "m") == {"w.bin": data}
    assert fault_server.served("/norange/w.bin") == [(0, 300_000)]  # one request, not split


def test_file_replaced_during_download(fault_server: FaultServer, tmp_path: Path) -> None:
    url = fault_server.add("/moving/w.bin", content("v1", 300_000))

    def replace_once(progress: Progress) -> None:
        if progress.bytes_done == 0:
            fault_server.add("/moving/w.bin", content("v2", 300_000))

    with pytest.raises(IntegrityError, match="changed"):
        download(url, tmp_path / "m", options=OPTIONS, progress=replace_once)
    assert not (tmp_path / "m").exists()
    download(url, tmp_path / "m", options=OPTIONS)  # a new attempt sees the new version
    assert read_tree(tmp_path / "m") == {"w.bin": content("v2", 300_000)}


def test_rate_limit_is_shared(fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("rate", 600_000)
    url = fault_server.add("/rate/w.bin", data)
    seen: list[Progress] = []
    options = FetchOptions(concurrency=4, chunk_size=64 * 1024, rate_limit=1_000_000,
                           fsync=False, progress_interval=0.1)
    download(url, tmp_path / "m", options=options, progress=seen.append)
    assert read_tree(tmp_path / "m") == {"w.bin": data}
    assert len(seen) >= 3  # at ~1 MB/s, 600 KB takes several progress intervals
    assert seen[-1].phase == "done"


def test_downloads_go_through_a_proxy_when_configured(nginx: NginxServer, tmp_path: Path) -> None:
    data = content("proxied", 200_000)
    path = _publish(nginx, "w.bin", data)
    settings = {"HTTP_PROXY": nginx.proxy_url}
    download(nginx.http_url + path, tmp_path / "a", settings=settings, options=OPTIONS)
    assert read_tree(tmp_path / "a") == {"w.bin": data}
    proxied = nginx.records("proxy:" + path)
    assert [r.method for r in proxied][:1] == ["HEAD"] and len(proxied) == 1 + 4
    # NO_PROXY bypasses it.
    settings = {"http_proxy": nginx.proxy_url, "no_proxy": "localhost,127.0.0.1"}
    download(nginx.http_url + path, tmp_path / "b", settings=settings, options=OPTIONS)
    assert len(nginx.records("proxy:" + path)) == 5


def test_proxy_selection() -> None:
    from localmodel.sources.http import proxy_for

    settings = {"HTTPS_PROXY": "proxy.corp:3128", "NO_PROXY": ".internal,10.0.0.1"}
    assert proxy_for("https", "models.example.com", None, settings) == "http://proxy.corp:3128"
    assert proxy_for("http", "models.example.com", None, settings) is None
    assert proxy_for("https", "store.internal", None, settings) is None
    assert proxy_for("https", "10.0.0.1", 443, settings) is None
    assert proxy_for("https", "x", None, {"https_proxy": "http://p:1", "no_proxy": "*"}) is None
