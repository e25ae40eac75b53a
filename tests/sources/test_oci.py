"""oci:// against CNCF distribution's registry, artifacts pushed by the real `oras` and `crane`
(tests/servers/oci.py): ModelPack artifacts and KServe modelcar images, auth flows, indexes,
redirects, and verification."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from localmodel import errors
from localmodel.fetch import FetchOptions, download, read_manifest
from localmodel.fetch.layout import Layout
from localmodel.sources.oci import (
    AUTH_SETTING,
    OCISource,
    credentials_for,
    is_loopback,
    node_platform,
    parse_oci_uri,
)
from localmodel.sources.registry import open_source, scheme_of
from tests.servers.oci import BlobStore, Registry, TokenServer
from tests.sources.modeldata import BIG, read_all, sample_model

MODEL = sample_model(seed=13)
MODELPACK = "application/vnd.cncf.model.manifest.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_TAR = "application/vnd.cncf.model.weight.v1.tar"


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def push_modelpack(registry: Registry, work: Path, reference: str, files: dict[str, bytes]) -> str:
    """A ModelPack-style artifact with `oras push`: one raw layer per file, each annotated with
    its org.cncf.model.filepath; returns the manifest digest."""
    write_tree(work, files)
    annotations = {name: {"org.cncf.model.filepath": name} for name in files}
    (work / "annotations.json").write_text(json.dumps(annotations))
    registry.oras("push", f"{registry.host}/{reference}", "--artifact-type", MODELPACK,
                  "--annotation-file", "annotations.json",
                  *[f"{name}:{WEIGHT_RAW}" for name in files], cwd=work)
    return registry.digest(reference)


def layer_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
        return info, None
    return info, (data if kind == tarfile.REGTYPE else None)


def push_modelcar(registry: Registry, reference: str, *layers: Path) -> str:
    """An image whose layers are `layers`, in order, with `crane append` (gzip layers)."""
    target = f"{registry.host}/{reference}"
    base: list[str] = []
    for layer in layers:
        registry.crane("append", *base, "-f", str(layer), "-t", target)
        base = ["-b", target]
    return registry.digest(reference)


def fetch(uri: str, dest: Path, **settings: str) -> object:
    return download(uri, dest, settings=settings, options=FetchOptions(concurrency=4, chunk_size=4 * 2**20))


# -- URIs -------------------------------------------------------------------------------------

def test_uri_parsing() -> None:
    ref = parse_oci_uri("oci://127.0.0.1:5000/team/model:v1.2")
    assert (ref.registry, ref.repository, ref.reference) == ("127.0.0.1:5000", "team/model", "v1.2")
    assert parse_oci_uri("oci://reg.example/m").reference == "latest"
    digest = "sha256:" + "a" * 64
    assert parse_oci_uri(f"oci://reg.example/a/b@{digest}").reference == digest
    assert scheme_of("oci://reg.example/m:1") == "oci"
    for bad in ("oci://", "oci://reg.example", "oci://reg.example/UPPER", "oci://reg.example/m@md5:00",
                "oci://reg.example/m:bad tag", "oci://reg.example/../m", "oci://user:pw@reg.example/m",
                "oci://reg.example/m?x=1"):
        with pytest.raises(errors.InvalidURIError):
            scheme_of(bad)
            parse_oci_uri(bad)


def test_plain_http_only_for_loopback_or_named_insecure() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("127.9.9.9") and is_loopback("localhost:1")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("10.0.0.1:5000") and not is_loopback("registry.example")
    # No traffic: whether plain HTTP may be tried is decided from the name and the setting.
    assert not OCISource("oci://registry.example/m", {})._plain_http_allowed
    assert OCISource("oci://registry.example:5000/m",
                     {"LOCALMODEL_OCI_INSECURE_REGISTRIES": "other, registry.example:5000"})._plain_http_allowed
    assert OCISource("oci://registry.example/m", {}).base_url() == "https://registry.example"


def test_credentials_never_go_to_a_plain_http_realm_of_an_https_registry() -> None:
    source = OCISource("oci://registry.example/m", {})
    for realm in ("http://auth.example/token", "http://127.0.0.1:1/token", "ftp://auth.example/t", "token"):
        with pytest.raises(errors.SourceAuthError):  # refused before any request is sent
            source.fetch_token({"realm": realm, "service": "s"}, ("user", "password"))


def test_the_default_platform_is_the_machines() -> None:
    assert node_platform("x86_64") == "linux/amd64" and node_platform("aarch64") == "linux/arm64"
    assert node_platform("unheard-of") == "linux/amd64"
    assert OCISource("oci://registry.example/m", {}).platform == node_platform()


def test_docker_config_credentials() -> None:
    import base64

    config = json.dumps({"auths": {
        "https://reg.example:5000/v1/": {"auth": base64.b64encode(b"u:p:w").decode()},
        "other.example": {"username": "a", "password": "b"}}})
    assert credentials_for(config, "reg.example:5000") == ("u", "p:w")
    assert credentials_for(config, "other.example") == ("a", "b")
    assert credentials_for(config, "third.example") is None
    with pytest.raises(errors.CredentialsConfigError):
        credentials_for("{not json", "reg.example")


# -- ModelPack ----------------------------------------------------------------------------------

def test_modelpack_raw_layers_land_at_their_filepath(oci_registry: Registry, tmp_path: Path) -> None:
    digest = push_modelpack(oci_registry, tmp_path / "push", "acme/pack:v1", MODEL)
    manifest = fetch(f"oci://{oci_registry.host}/acme/pack:v1", tmp_path / "out")
    assert tree(tmp_path / "out") == MODEL
    assert manifest.revision == digest  # the tag, resolved once
    assert manifest.details["kind"] == "modelpack"
    assert {f.path: f.sha256 for f in manifest.files} == {
        name: hashlib.sha256(data).hexdigest() for name, data in MODEL.items()}


def test_modelpack_by_digest_and_ranged_reads(oci_registry: Registry, tmp_path: Path) -> None:
    digest = push_modelpack(oci_registry, tmp_path / "push", "acme/pack:ranged", MODEL)
    source = open_source(f"oci://{oci_registry.host}/acme/pack@{digest}")
    listing = source.list_files()
    assert listing.revision == digest
    big = next(layer for layer in listing.layers if layer.path == BIG)
    blob = next(f for f in listing.files if f.path == big.blob)
    assert blob.digest.value == hashlib.sha256(MODEL[BIG]).hexdigest()
    assert read_all(source, blob.path, 5_000_000, 1234) == MODEL[BIG][5_000_000:5_001_234]
    source.close()


def test_modelpack_tar_layer_unpacked_at_its_path(oci_registry: Registry, tmp_path: Path) -> None:
    work = tmp_path / "push"
    write_tree(work / "tokenizer", {"vocab.txt": b"a b c", "merges/m.txt": b"x y"})
    write_tree(work, {"model.bin": b"weights"})
    oci_registry.oras("push", f"{oci_registry.host}/acme/pack:tar", "--artifact-type", MODELPACK,
                      f"tokenizer:{WEIGHT_TAR}+gzip", f"model.bin:{WEIGHT_RAW}", cwd=work)
    fetch(f"oci://{oci_registry.host}/acme/pack:tar", tmp_path / "out")
    assert tree(tmp_path / "out") == {"tokenizer/vocab.txt": b"a b c", "tokenizer/merges/m.txt": b"x y",
                                      "model.bin": b"weights"}


# -- modelcar -----------------------------------------------------------------------------------

def test_modelcar_keeps_the_models_folder_with_whiteouts(oci_registry: Registry, tmp_path: Path) -> None:
    first = layer_tar(tmp_path / "l1.tar", [
        member("etc", kind=tarfile.DIRTYPE), member("etc/passwd", b"root:x:0:0"),
        member("bin", kind=tarfile.DIRTYPE), member("bin/sh", kind=tarfile.SYMTYPE, link="/bin/busybox"),
        member("models", kind=tarfile.DIRTYPE), member("models/config.json", b"{}"),
        member("models/old.bin", b"old"), member("models/stale", kind=tarfile.DIRTYPE),
        member("models/stale/a", b"a"), member("models/replaced.txt", b"v1"),
        member("models/opaque", kind=tarfile.DIRTYPE), member("models/opaque/gone", b"g")])
    second = layer_tar(tmp_path / "l2.tar", [
        member("models", kind=tarfile.DIRTYPE), member("models/.wh.old.bin"), member("models/.wh.stale"),
        member("models/replaced.txt", b"v2"), member("models/opaque", kind=tarfile.DIRTYPE),
        member("models/opaque/.wh..wh..opq"), member("models/opaque/kept", b"k"),
        member("models/weights", kind=tarfile.DIRTYPE), member("models/weights/w.bin", MODEL[BIG]),
        member("models/weights/link.bin", kind=tarfile.LNKTYPE, link="models/weights/w.bin")])
    digest = push_modelcar(oci_registry, "acme/car:v1", first, second)
    manifest = fetch(f"oci://{oci_registry.host}/acme/car:v1", tmp_path / "out")
    assert tree(tmp_path / "out") == {
        "config.json": b"{}", "replaced.txt": b"v2", "opaque/kept": b"k",
        "weights/w.bin": MODEL[BIG], "weights/link.bin": MODEL[BIG]}
    assert manifest.revision == digest and manifest.details["kind"] == "modelcar"


def test_multi_arch_index_picks_the_platform_or_refuses(oci_registry: Registry, tmp_path: Path) -> None:
    amd = layer_tar(tmp_path / "amd.tar", [member("models/arch.txt", b"amd64")])
    arm = layer_tar(tmp_path / "arm.tar", [member("models/arch.txt", b"arm64")])
    host = oci_registry.host
    for name, layer, platform in (("amd", amd, "linux/amd64"), ("arm", arm, "linux/arm64")):
        oci_registry.crane("append", "-f", str(layer), "-t", f"{host}/acme/multi:{name}")
        oci_registry.crane("mutate", f"{host}/acme/multi:{name}", "--set-platform", platform,
                           "-t", f"{host}/acme/multi:{name}")
    oci_registry.crane("index", "append", "-m", f"{host}/acme/multi:arm", "-m",
                       f"{host}/acme/multi:amd", "-t", f"{host}/acme/multi:all")
    index_digest = oci_registry.digest("acme/multi:all")
    manifest = fetch(f"oci://{host}/acme/multi:all", tmp_path / "amd64")
    assert tree(tmp_path / "amd64") == {"arch.txt": b"amd64"}
    assert manifest.revision == index_digest
    fetch(f"oci://{host}/acme/multi:all", tmp_path / "arm64", LOCALMODEL_OCI_PLATFORM="linux/arm64")
    assert tree(tmp_path / "arm64") == {"arch.txt": b"arm64"}
    with pytest.raises(errors.PermanentError, match="linux/amd64, linux/arm64"):
        fetch(f"oci://{host}/acme/multi:all", tmp_path / "s390x", LOCALMODEL_OCI_PLATFORM="linux/s390x")
    assert not (tmp_path / "s390x").exists()


# -- hostile layers -----------------------------------------------------------------------------

HOSTILE = {
    "dotdot": [member("models/../../escape", b"x")],
    "absolute": [member("/models/abs", b"x")],
    "symlink-out": [member("models/link", kind=tarfile.SYMTYPE, link="/etc/passwd")],
    "hardlink-out": [member("etc/passwd", b"secret"),
                     member("models/hard", kind=tarfile.LNKTYPE, link="etc/passwd")],
    "whiteout-of-dot": [member("models/a/.wh..", b"")],
    "climbing-whiteout": [member("models/a/.wh...", b"")],
    "device": [member("models/dev", kind=tarfile.CHRTYPE)],
    "fifo": [member("models/fifo", kind=tarfile.FIFOTYPE)],
    "models-is-a-link": [member("models", kind=tarfile.SYMTYPE, link="/etc")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_refused_and_nothing_escapes(oci_registry: Registry, tmp_path: Path,
                                                         case: str) -> None:
    layer = layer_tar(tmp_path / "evil.tar", [member("models", kind=tarfile.DIRTYPE)] * (case != "models-is-a-link")
                      + HOSTILE[case])
    push_modelcar(oci_registry, f"acme/evil:{case}", layer)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(errors.UnsafePathError):
        fetch(f"oci://{oci_registry.host}/acme/evil:{case}", Layout.in_store(root, "key"))
    assert not (root / "models" / "key").exists()
    assert read_manifest(Layout.in_store(root, "key")) is None
    outside = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    assert not any("escape" in p or p.endswith("/abs") for p in outside)


def test_a_damaged_blob_fails_its_digest_and_nothing_is_published(oci_registry: Registry, tmp_path: Path) -> None:
    push_modelpack(oci_registry, tmp_path / "push", "acme/damaged:v1", {"w.bin": b"A" * 100_000})
    blob = oci_registry.blob_file("sha256:" + hashlib.sha256(b"A" * 100_000).hexdigest())
    blob.write_bytes(b"B" * 100_000)  # same size, other bytes: only the digest can tell
    with pytest.raises(errors.IntegrityError):
        fetch(f"oci://{oci_registry.host}/acme/damaged:v1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_too_many_layers_is_refused_before_any_blob(oci_registry: Registry, tmp_path: Path) -> None:
    files = {f"f{i}.txt": b"%d" % i for i in range(6)}
    push_modelpack(oci_registry, tmp_path / "push", "acme/many:v1", files)
    with pytest.raises(errors.TooManyFilesError):
        download(f"oci://{oci_registry.host}/acme/many:v1", tmp_path / "out",
                 options=FetchOptions(max_files=5))


# -- TLS ----------------------------------------------------------------------------------------

def test_a_tls_registry_is_spoken_to_over_https_with_its_ca(oci_tls_registry: Registry, tmp_path: Path) -> None:
    push_modelpack(oci_tls_registry, tmp_path / "push", "acme/tls:v1", {"t.bin": b"over TLS"})
    uri = f"oci://{oci_tls_registry.host}/acme/tls:v1"
    source = OCISource(uri, {"LOCALMODEL_HTTP_CA_BUNDLE": str(oci_tls_registry.ca_bundle)})
    assert source.base_url() == f"https://{oci_tls_registry.host}"
    source.close()
    fetch(uri, tmp_path / "out", LOCALMODEL_HTTP_CA_BUNDLE=str(oci_tls_registry.ca_bundle))
    assert tree(tmp_path / "out") == {"t.bin": b"over TLS"}
    # Loopback may fall back to plain HTTP, but not past a certificate it does not trust.
    with pytest.raises(errors.PermanentError, match="LOCALMODEL_HTTP_CA_BUNDLE"):
        fetch(uri, tmp_path / "untrusted")


# -- auth ---------------------------------------------------------------------------------------

def test_basic_auth_with_docker_config(oci_basic_registry: Registry, tmp_path: Path) -> None:
    push_modelpack(oci_basic_registry, tmp_path / "push", "acme/basic:v1", {"a.bin": b"basic"})
    uri = f"oci://{oci_basic_registry.host}/acme/basic:v1"
    with pytest.raises(errors.SourceAuthError, match="anonymous"):
        fetch(uri, tmp_path / "anonymous")
    fetch(uri, tmp_path / "out", **{AUTH_SETTING: oci_basic_registry.auth_setting})
    assert tree(tmp_path / "out") == {"a.bin": b"basic"}


def test_bearer_token_flow(oci_token_registry: tuple[Registry, TokenServer], tmp_path: Path) -> None:
    registry, tokens = oci_token_registry
    push_modelpack(registry, tmp_path / "push", "acme/token:v1", MODEL)
    uri = f"oci://{registry.host}/acme/token:v1"
    tokens.requests.clear()
    with pytest.raises(errors.SourceAuthError, match="anonymous access"):
        fetch(uri, tmp_path / "anonymous")  # an anonymous token grants nothing here
    assert tokens.requests and all(r["scope"] == "repository:acme/token:pull" for r in tokens.requests)
    wrong = json.dumps({"auths": {registry.host: {"username": "puller", "password": "wrong"}}})
    with pytest.raises(errors.SourceAuthError):
        fetch(uri, tmp_path / "wrong", **{AUTH_SETTING: wrong})
    fetch(uri, tmp_path / "out", **{AUTH_SETTING: registry.auth_setting})
    assert tree(tmp_path / "out") == MODEL
    assert tokens.requests[-1]["service"] == "localmodel-registry"


def test_blob_redirect_does_not_forward_authorization(oci_redirect_registry: tuple[Registry, BlobStore],
                                                      tmp_path: Path) -> None:
    registry, store = oci_redirect_registry
    push_modelpack(registry, tmp_path / "push", "acme/redirect:v1", MODEL)
    store.requests.clear()
    fetch(f"oci://{registry.host}/acme/redirect:v1", tmp_path / "out",
          **{AUTH_SETTING: registry.auth_setting})
    assert tree(tmp_path / "out") == MODEL
    blob_reads = [r for r in store.requests if "/blobs/" in r["path"]]
    assert len(blob_reads) >= len(MODEL)  # every blob came from the object store...
    assert any("range" in r for r in blob_reads)  # ...in ranges...
    assert not any("authorization" in r for r in blob_reads)  # ...and never saw the credentials


# -- the CLI ------------------------------------------------------------------------------------

def test_localmodel_fetch_reads_docker_config(oci_basic_registry: Registry, tmp_path: Path) -> None:
    push_modelpack(oci_basic_registry, tmp_path / "push", "acme/cli:v1", {"cli.bin": b"from the cli"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALMODEL_OCI")}
    env["DOCKER_CONFIG"] = str(oci_basic_registry.docker_config)
    result = subprocess.run([sys.executable, "-m", "localmodel", "fetch", "--progress", "none",
                             f"oci://{oci_basic_registry.host}/acme/cli:v1", str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "out") == {"cli.bin": b"from the cli"}


# -- tokens and resume --------------------------------------------------------------------------

def test_an_expired_token_is_renewed_mid_download(oci_token_registry: tuple[Registry, TokenServer],
                                                  tmp_path: Path) -> None:
    registry, tokens = oci_token_registry
    data = os.urandom(6 * 2**20)
    push_modelpack(registry, tmp_path / "push", "acme/renew:v1", {"w.bin": data})
    tokens.lifetime = -57  # the registry allows 60 s of leeway: each token is good for ~3 s
    try:
        tokens.requests.clear()
        download(f"oci://{registry.host}/acme/renew:v1", tmp_path / "out",
                 settings={AUTH_SETTING: registry.auth_setting},
                 options=FetchOptions(concurrency=2, chunk_size=2**20, rate_limit=1_000_000))
    finally:
        tokens.lifetime = 300
    assert (tmp_path / "out" / "w.bin").read_bytes() == data
    assert len(tokens.requests) >= 2  # the first token expired and another was fetched


_CHILD = """
import sys
from localmodel.fetch import FetchOptions, download
download(sys.argv[1], sys.argv[2], settings={"LOCALMODEL_OCI_AUTH": sys.argv[3]},
         options=FetchOptions(concurrency=2, chunk_size=2**20, checkpoint_size=256 * 1024,
                              rate_limit=4_000_000, fsync=False))
"""


def test_a_killed_download_resumes_without_fetching_journaled_bytes_again(
        oci_redirect_registry: tuple[Registry, BlobStore], tmp_path: Path) -> None:
    import signal
    import time

    from tests.fetch.test_resume import journaled_bytes

    registry, store = oci_redirect_registry
    data = os.urandom(16 * 2**20)
    push_modelpack(registry, tmp_path / "push", "acme/resume:v1", {"w.bin": data})
    uri, dest = f"oci://{registry.host}/acme/resume:v1", tmp_path / "out"
    layout = Layout.for_path(dest)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, uri, str(dest), registry.auth_setting])
    try:
        deadline = time.monotonic() + 60
        while journaled_bytes(layout.staging) < 4 * 2**20 and time.monotonic() < deadline:
            assert child.poll() is None, "the download ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    journaled = journaled_bytes(layout.staging)
    assert 4 * 2**20 <= journaled < len(data)
    store.requests.clear()
    download(uri, dest, settings={AUTH_SETTING: registry.auth_setting},
             options=FetchOptions(concurrency=2, chunk_size=2**20, fsync=False))
    assert (dest / "w.bin").read_bytes() == data
    asked = 0
    for request in store.requests:
        if "/blobs/" in request["path"] and "range" in request:
            start, end = request["range"].removeprefix("bytes=").split("-")
            asked += int(end) - int(start) + 1
    assert asked <= len(data) - journaled
