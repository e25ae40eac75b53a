"""HFSource against the project's local Hub endpoint, and huggingface_hub against the same."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from localmodel import errors
from localmodel.fetch import download
from localmodel.sources.hf import HFSource, parse_hf_uri
from tests.servers.hf import LocalHub, git_blob_sha1
from tests.sources.modeldata import BIG, check_listing, check_reads, read_all, sample_model

MODEL = sample_model(seed=5)


@pytest.fixture
def repo(hf_hub: LocalHub) -> str:
    hf_hub.add_commit("acme/tiny-model", MODEL)
    return "acme/tiny-model"


def open_source(hub: LocalHub, uri: str, **settings: str) -> HFSource:
    return HFSource(uri, {"HF_ENDPOINT": hub.url, **settings})


def test_lists_revision_as_commit_sha(hf_hub: LocalHub, repo: str) -> None:
    sha = hf_hub.add_commit(repo, MODEL)
    listing = open_source(hf_hub, f"hf://{repo}").list_files()
    assert listing.revision == sha
    check_listing(listing, MODEL)


def test_lfs_files_carry_sha256_and_git_files_their_blob_id(hf_hub: LocalHub, repo: str) -> None:
    files = {f.path: f for f in open_source(hf_hub, f"hf://{repo}").list_files().files}
    big = files[BIG]
    assert big.digest is not None and big.digest.algorithm == "sha256"
    assert big.digest.value == hashlib.sha256(MODEL[BIG]).hexdigest()
    config = files["config.json"]
    assert config.digest is None
    assert config.version == git_blob_sha1(MODEL["config.json"])
    assert files["empty.txt"].size == 0


def test_single_zip_repo_is_downloaded_not_unpacked(hf_hub: LocalHub, tmp_path: Path) -> None:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("inner/weights.bin", b"w" * 1000)
    hf_hub.add_commit("acme/zipped", {"dataset.zip": packed.getvalue()})
    listing = open_source(hf_hub, "hf://acme/zipped").list_files()
    assert listing.details["archive"] == "none"
    manifest = download("hf://acme/zipped", tmp_path / "model",
                        settings={"HF_ENDPOINT": hf_hub.url})
    assert manifest.archive is None
    assert [f.path for f in manifest.files] == ["dataset.zip"]
    assert (tmp_path / "model" / "dataset.zip").read_bytes() == packed.getvalue()
    assert not (tmp_path / "model" / "inner").exists()


def test_reads_exact_ranges_through_the_cdn_redirect(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    source.list_files()
    check_reads(source, MODEL)
    assert any(path.startswith("/_lfs/") for _, path in hf_hub.requests)


def test_reads_without_redirect(hf_hub: LocalHub, repo: str) -> None:
    hf_hub.faults.no_redirect = True
    source = open_source(hf_hub, f"hf://{repo}")
    assert read_all(source, BIG, 100, 1000) == MODEL[BIG][100:1100]


def test_concurrent_reads(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    data = MODEL[BIG]
    parts = [(off, min(1 << 20, len(data) - off)) for off in range(0, len(data), 1 << 20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda p: read_all(source, BIG, *p), parts))
    assert b"".join(got) == data


def test_revision_is_pinned_when_the_branch_moves(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    first = source.list_files().revision
    changed = dict(MODEL, **{"config.json": b'{"moved": true}\n'})
    second = hf_hub.add_commit(repo, changed)
    assert second != first
    # The open source keeps reading the commit it listed.
    assert read_all(source, "config.json", 0, len(MODEL["config.json"])) == MODEL["config.json"]
    assert all(first in path for _, path in hf_hub.requests if "/resolve/" in path)
    # A new source sees the new commit.
    assert open_source(hf_hub, f"hf://{repo}").list_files().revision == second


def test_explicit_revision_by_branch_and_sha(hf_hub: LocalHub, repo: str) -> None:
    old = hf_hub.add_commit(repo, {"a.txt": b"old"}, revision="v1")
    hf_hub.add_commit(repo, {"a.txt": b"new"}, revision="v1")
    by_sha = open_source(hf_hub, f"hf://{repo}:{old}")
    assert by_sha.list_files().revision == old
    assert read_all(by_sha, "a.txt", 0, 3) == b"old"
    by_branch = open_source(hf_hub, f"hf://{repo}:v1")
    assert read_all(by_branch, "a.txt", 0, 3) == b"new"


def test_tree_pagination(hf_hub: LocalHub) -> None:
    files = {f"shards/part-{i:03d}.txt": str(i).encode() for i in range(25)}
    hf_hub.add_commit("acme/many-files", files)
    hf_hub.tree_page_size = 7
    try:
        listing = open_source(hf_hub, "hf://acme/many-files").list_files()
    finally:
        hf_hub.tree_page_size = 1000
    check_listing(listing, files)
    assert sum("cursor=" in path for _, path in hf_hub.requests) >= 3


def test_missing_repo_is_not_found_with_and_without_token(hf_hub: LocalHub) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        open_source(hf_hub, "hf://acme/does-not-exist").list_files()
    with pytest.raises(errors.SourceNotFoundError):
        open_source(hf_hub, "hf://acme/does-not-exist", HF_TOKEN="hf_x").list_files()


def test_missing_revision_is_not_found(hf_hub: LocalHub, repo: str) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        open_source(hf_hub, f"hf://{repo}:no-such-branch").list_files()


def test_missing_file_is_not_found(hf_hub: LocalHub, repo: str) -> None:
    with pytest.raises(errors.SourceNotFoundError):
        read_all(open_source(hf_hub, f"hf://{repo}"), "nope.bin", 0, 1)


def test_token_is_sent_as_bearer(hf_hub: LocalHub, repo: str) -> None:
    hf_hub.faults.required_token = "hf_secret_token"
    source = open_source(hf_hub, f"hf://{repo}", HF_TOKEN="hf_secret_token")
    check_listing(source.list_files(), MODEL)
    assert read_all(source, BIG, 0, 10) == MODEL[BIG][:10]
    assert hf_hub.tokens_sent_to_cdn == 0  # the token stays on the Hub's host


def test_bad_token_is_auth_error(hf_hub: LocalHub, repo: str) -> None:
    hf_hub.faults.required_token = "hf_secret_token"
    with pytest.raises(errors.SourceAuthError) as caught:
        open_source(hf_hub, f"hf://{repo}", HF_TOKEN="hf_wrong").list_files()
    assert "hf_wrong" not in str(caught.value)


def test_gated_repo_is_auth_error(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    source.list_files()
    hf_hub.faults.gated.add(repo)
    with pytest.raises(errors.SourceAuthError):
        read_all(source, "config.json", 0, 1)
    with pytest.raises(errors.SourceAuthError):
        open_source(hf_hub, f"hf://{repo}").list_files()


def test_rate_limit_is_transient_with_retry_after(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    hf_hub.faults.failing_requests = 1
    hf_hub.faults.retry_after = 13
    with pytest.raises(errors.SourceUnavailableError) as caught:
        source.list_files()
    assert caught.value.retry_after == 13
    source.list_files()  # the next request goes through
    hf_hub.faults.failing_requests = 1
    with pytest.raises(errors.SourceUnavailableError) as on_read:
        read_all(source, BIG, 0, 10)
    assert on_read.value.retry_after == 13


def test_server_errors_are_transient(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    source.list_files()
    hf_hub.faults.failing_requests = 1
    hf_hub.faults.failing_status = 503
    hf_hub.faults.retry_after = None
    with pytest.raises(errors.SourceUnavailableError) as caught:
        read_all(source, BIG, 0, 10)
    assert caught.value.retry_after is None
    assert read_all(source, BIG, 0, 10) == MODEL[BIG][:10]


def test_connection_dropped_mid_range_is_transient(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    hf_hub.faults.truncate[(repo, BIG)] = 700_000
    received = bytearray()
    with pytest.raises(errors.SourceUnavailableError):
        for chunk in source.read_range(BIG, 1000, 2_000_000):
            received += chunk
    # What arrived before the drop is correct, so the engine can resume from there.
    assert bytes(received) == MODEL[BIG][1000:1000 + len(received)]
    del hf_hub.faults.truncate[(repo, BIG)]
    rest = read_all(source, BIG, 1000 + len(received), 2_000_000 - len(received))
    assert bytes(received) + rest == MODEL[BIG][1000:2_001_000]


def test_abandoned_read_does_not_poison_the_connection(hf_hub: LocalHub, repo: str) -> None:
    source = open_source(hf_hub, f"hf://{repo}")
    for _ in source.read_range(BIG, 0, 5_000_000):
        break  # the consumer stops early; the generator is closed
    assert read_all(source, "config.json", 0, 10) == MODEL["config.json"][:10]
    assert read_all(source, BIG, 7, 3_000_000) == MODEL[BIG][7:3_000_007]


def test_corruption_switch_changes_served_bytes(hf_hub: LocalHub, repo: str) -> None:
    # The source passes bytes through untouched; the engine's digest check catches this.
    hf_hub.faults.corrupt[(repo, BIG)] = {5}
    source = open_source(hf_hub, f"hf://{repo}")
    got = read_all(source, BIG, 0, 10)
    assert got != MODEL[BIG][:10] and got[5] == MODEL[BIG][5] ^ 0xFF


def test_bytes_served_counter(hf_hub: LocalHub, repo: str) -> None:
    before = hf_hub.bytes_served
    read_all(open_source(hf_hub, f"hf://{repo}"), BIG, 1000, 4096)
    assert hf_hub.bytes_served - before == 4096


def test_files_served_from_disk(hf_hub: LocalHub, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40000
    (tmp_path / "w.safetensors").write_bytes(data)
    hf_hub.add_commit("acme/on-disk", {"w.safetensors": tmp_path / "w.safetensors"})
    source = open_source(hf_hub, "hf://acme/on-disk")
    [remote] = source.list_files().files
    assert remote.digest is not None and remote.digest.value == hashlib.sha256(data).hexdigest()
    assert read_all(source, "w.safetensors", 12345, 700000) == data[12345:712345]


def test_snapshot_download_works_against_the_local_hub(hf_hub: LocalHub, repo: str,
                                                      tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download

    out = snapshot_download(repo, endpoint=hf_hub.url, local_dir=tmp_path / "snap", token=False)
    for path, data in MODEL.items():
        assert (Path(out) / path).read_bytes() == data
    cached = snapshot_download(repo, endpoint=hf_hub.url, cache_dir=tmp_path / "cache",
                               token=False)
    assert (Path(cached) / BIG).read_bytes() == MODEL[BIG]


@pytest.mark.parametrize("uri,expected", [
    ("hf://owner/model", ("owner/model", "main")),
    ("hf://owner/model:v1.0", ("owner/model", "v1.0")),
    ("hf://owner/model:" + "a" * 40, ("owner/model", "a" * 40)),
])
def test_uri_parsing(uri: str, expected: tuple[str, str]) -> None:
    assert parse_hf_uri(uri) == expected


@pytest.mark.parametrize("uri", ["hf://model", "hf://a/b/c", "hf://owner/model:", "s3://a/b",
                                 "hf://../x", "hf://user@owner/model"])
def test_invalid_uris(uri: str) -> None:
    with pytest.raises(errors.InvalidURIError):
        parse_hf_uri(uri)
