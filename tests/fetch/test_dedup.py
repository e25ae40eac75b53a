"""Content dedup (fetch/blobs.py): models and revisions that share files keep the bytes once,
against real origins (the project's Hugging Face endpoint, CNCF distribution's registry).

Each test downloads into the agent's store layout (`<root>/models/<key>`, `<root>/blobs/`) and
counts what the origin sent, which inodes the model folders share, and the bytes on disk."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from localmodel.api.keys import storage_key
from localmodel.errors import IntegrityError
from localmodel.fetch import FetchOptions, Layout, Progress, download, verify_full
from localmodel.fetch import blobs as content
from localmodel.fetch.hashing import file_hexdigest, file_sha256
from localmodel.fetch import engine
from localmodel.fetch.staging import Staging
from localmodel.node.store import ModelStore
from localmodel.sources.base import Digest, Settings, Source
from localmodel.sources.registry import open_source
from tests.servers.hf import LocalHub
from tests.servers.oci import Registry
from tests.servers.s3 import S3Server
from tests.sources.test_oci import layer_tar, member, push_modelcar, push_modelpack

MiB = 2**20
OPTIONS = FetchOptions(concurrency=4, chunk_size=1 * MiB)
REPO = "acme/sharded"


def shards(seed: int, count: int = 4, size: int = 2 * MiB) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"model-{i:05d}-of-{count:05d}.safetensors": rnd.randbytes(size + i) for i in range(1, count + 1)}


def revisions(seed: int = 1) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Two revisions of one model: the second changes the last shard and the config, and both
    hold the same non-LFS tokenizer (no listed sha256: shared after download, not before)."""
    tokenizer = random.Random(seed + 100).randbytes(200_000)
    first = {"config.json": b'{"revision": 1}', "tokenizer.json": tokenizer, **shards(seed)}
    second = dict(first)
    second["config.json"] = b'{"revision": 2}'
    last = sorted(k for k in first if k.endswith(".safetensors"))[-1]
    second[last] = random.Random(seed + 7).randbytes(len(first[last]))
    return first, second


def publish(hub: LocalHub, first: dict[str, bytes], second: dict[str, bytes], repo: str = REPO) -> tuple[str, str]:
    lfs = {k for k in first if k.endswith(".safetensors")} | {k for k in second if k.endswith(".safetensors")}
    hub.add_commit(repo, first, revision="v1", lfs=lfs)
    hub.add_commit(repo, second, revision="v2", lfs=lfs)
    return f"hf://{repo}:v1", f"hf://{repo}:v2"


def inode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def bytes_on_disk(root: Path) -> int:
    """What the model folders hold on disk: every inode once."""
    seen: dict[tuple[int, int], int] = {}
    for folder, _dirs, files in os.walk(root / "models"):
        for name in files:
            st = os.lstat(Path(folder, name))
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def entries(root: Path) -> dict[str, int]:
    """Every content store entry, as "<algorithm>/<hex>" -> its link count, in both folders."""
    found: dict[str, int] = {}
    for algorithm in content.ALGORITHMS:
        folder = root / "blobs" / algorithm
        if folder.is_dir():
            found.update({f"{algorithm}/{p.name}": p.stat().st_nlink for p in folder.iterdir()})
    return found


def store_name(path: str, data: bytes) -> str:
    """The entry a file of `revisions` gets: LFS shards by the sha256 the listing names and the
    download checked, the rest (no digest listed) by their local BLAKE3."""
    if path.endswith(".safetensors"):
        return "sha256/" + hashlib.sha256(data).hexdigest()
    return "blake3/" + blake3.blake3(data).hexdigest()


def entry_intact(root: Path, name: str) -> bool:
    """Whether the entry's bytes still hash to its name, with its folder's algorithm."""
    algorithm, value = name.split("/")
    return file_hexdigest(root / "blobs" / name, algorithm) == value


class Counting:
    """A source factory that counts the bytes every source it opens reads from its origin."""

    def __init__(self) -> None:
        self.read = 0
        self.paths: set[str] = set()

    def open(self, uri: str, settings: Settings) -> Source:
        counter = self
        inner = open_source(uri, settings)

        class Counted:
            def __init__(self) -> None:
                self.uri = inner.uri

            def list_files(self):  # type: ignore[no-untyped-def]
                return inner.list_files()

            def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
                counter.paths.add(path)
                for piece in inner.read_range(path, offset, length):
                    counter.read += len(piece)
                    yield piece

            def close(self) -> None:
                inner.close()

        return Counted()


def fetch(hub: LocalHub, uri: str, root: Path, **kwargs: object) -> tuple[Layout, list[Progress]]:
    reports: list[Progress] = []
    layout = Layout.in_store(root, storage_key(uri))
    download(uri, layout, settings={"HF_ENDPOINT": hub.url}, options=kwargs.pop("options", OPTIONS),  # type: ignore[arg-type]
             progress=reports.append, **kwargs)  # type: ignore[arg-type]
    return layout, reports


def files_of(layout: Layout) -> dict[str, bytes]:
    return {p.relative_to(layout.dest).as_posix(): p.read_bytes()
            for p in sorted(layout.dest.rglob("*")) if p.is_file()}


# --- Hugging Face: two revisions sharing most shards ---------------------------------------------

def test_a_second_revision_downloads_only_what_changed_and_shares_the_rest(hf_hub: LocalHub, tmp_path: Path) -> None:
    first, second = revisions()
    uri_1, uri_2 = publish(hf_hub, first, second)
    root = tmp_path / "root"
    layout_1, _ = fetch(hf_hub, uri_1, root)
    after_first = hf_hub.bytes_served
    ranges_first = {name: hf_hub.served(REPO, name) for name in first}
    layout_2, reports = fetch(hf_hub, uri_2, root)
    fetched = hf_hub.bytes_served - after_first

    assert files_of(layout_1) == first and files_of(layout_2) == second
    assert verify_full(layout_1, read_manifest_of(layout_1)) == []
    assert verify_full(layout_2, read_manifest_of(layout_2)) == []
    changed = [k for k in second if second[k] != first[k]]
    same_lfs = [k for k in second if second[k] == first[k] and k.endswith(".safetensors")]
    # Of the shards whose listed sha256 the store held, only a probe was asked for (64 KiB at a
    # random offset: the origin shows it holds them); the tokenizer (no listed digest) was
    # fetched, then shared on disk.
    probe = content.PROBE_SIZE
    assert fetched == sum(len(second[k]) for k in changed) + len(second["tokenizer.json"]) + probe * len(same_lfs)
    for name in same_lfs:
        [(start, end)] = hf_hub.served(REPO, name)[len(ranges_first[name]):]
        assert end - start == probe, name
        assert inode(layout_1.dest / name) == inode(layout_2.dest / name)
    assert inode(layout_1.dest / "tokenizer.json") == inode(layout_2.dest / "tokenizer.json")
    for name in changed:
        assert inode(layout_1.dest / name) != inode(layout_2.dest / name)
    assert reports[0].bytes_reused == reports[-1].bytes_reused == sum(len(second[k]) for k in same_lfs)
    assert reports[0].bytes_done == reports[0].bytes_reused  # counted done from the first report

    # On disk: the union of both revisions' contents, once; each shared file read-only.
    union = {hashlib.sha256(v).hexdigest(): len(v) for v in [*first.values(), *second.values()]}
    assert bytes_on_disk(root) == sum(union.values())
    assert bytes_on_disk(root) < sum(map(len, first.values())) + sum(map(len, second.values()))
    for name in same_lfs:
        assert stat.S_IMODE(os.lstat(layout_2.dest / name).st_mode) == 0o444
        assert os.lstat(layout_2.dest / name).st_nlink == 3  # two models and the store
    # Small files stay the model's own (no store entry for them).
    assert os.lstat(layout_2.dest / "config.json").st_nlink == 1
    assert not (root / "staging" / storage_key(uri_2)).exists()


def read_manifest_of(layout: Layout):  # type: ignore[no-untyped-def]
    from localmodel.fetch import read_manifest

    manifest = read_manifest(layout)
    assert manifest is not None
    return manifest


def test_deleting_one_model_never_damages_another_and_collection_frees_only_its_bytes(
        hf_hub: LocalHub, tmp_path: Path) -> None:
    first, second = revisions(seed=2)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/delete")
    store = ModelStore(tmp_path / "root")
    for uri in (uri_1, uri_2):
        store.download(storage_key(uri), uri, settings={"HF_ENDPOINT": hf_hub.url}, options=OPTIONS,
                       progress=lambda _: None)
    big = {store_name(k, v) for files in (first, second) for k, v in files.items() if len(v) >= content.MIN_SIZE}
    assert any(name.startswith("blake3/") for name in big)  # the tokenizer: no digest listed
    assert set(entries(store.root)) == big
    assert store.collect_blobs().removed == 0  # every entry is some model's file

    store.delete(storage_key(uri_1))
    assert store.scrub(storage_key(uri_2)) == []
    layout_2 = store.layout(storage_key(uri_2))
    assert files_of(layout_2) == second
    collected = store.collect_blobs()
    only_first = [v for k, v in first.items() if second[k] != v and len(v) >= content.MIN_SIZE]
    assert (collected.removed, collected.freed_bytes) == (len(only_first), sum(map(len, only_first)))
    assert set(entries(store.root)) == {store_name(k, v) for k, v in second.items() if len(v) >= content.MIN_SIZE}
    assert store.scrub(storage_key(uri_2)) == []

    store.delete(storage_key(uri_2))
    assert store.collect_blobs().removed == len(entries(store.root)) or entries(store.root) == {}
    assert entries(store.root) == {}


def test_a_store_entry_that_rotted_is_evicted_and_fetched_afresh(hf_hub: LocalHub, tmp_path: Path) -> None:
    first, second = revisions(seed=3)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/rot")
    root = tmp_path / "root"
    layout_1, _ = fetch(hf_hub, uri_1, root)
    shard = sorted(k for k in first if k.endswith(".safetensors"))[0]
    entry = root / "blobs" / "sha256" / hashlib.sha256(first[shard]).hexdigest()
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as handle:  # bit rot under every link of that inode
        handle.seek(1000)
        handle.write(b"\x00" * 8)
    rotten = inode(entry)
    before = len(hf_hub.served("acme/rot", shard))

    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert files_of(layout_2) == second  # the rotten bytes were not given to the new model
    assert len(hf_hub.served("acme/rot", shard)) > before
    assert inode(entry) != rotten and inode(entry) == inode(layout_2.dest / shard)
    assert file_sha256(entry) == entry.name
    # The first model still holds the rotten inode: its scrub finds it (and the agent repairs).
    assert any(shard in problem for problem in verify_full(layout_1, read_manifest_of(layout_1)))


def test_files_from_sources_without_digests_share_through_their_blake3(tmp_path: Path) -> None:
    """file:// (like plain HTTP and pvc://) names no digest: the engine hashes such files with
    BLAKE3 (issue 14), and they share through `blobs/blake3/`, re-hashed with BLAKE3 before
    reuse (a rotten entry is evicted, never linked into one more model), and collected with
    the sha256 folder's entries."""
    weights = random.Random(40).randbytes(3 * MiB)
    root = tmp_path / "root"
    store = ModelStore(root)
    uris = []
    for name in ("a", "b", "c"):
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        (folder / "w.bin").write_bytes(weights)
        (folder / "config.json").write_bytes(name.encode())
        uris.append(str(folder))
    name = "blake3/" + blake3.blake3(weights).hexdigest()

    for uri in uris[:2]:
        store.download(storage_key(uri), uri, settings={}, options=OPTIONS, progress=lambda _: None)
    a, b = (store.layout(storage_key(uri)) for uri in uris[:2])
    assert read_manifest_of(a).files[-1].local == Digest("blake3", name.split("/")[1])
    assert entries(root) == {name: 3}  # two models and the store
    assert inode(a.dest / "w.bin") == inode(b.dest / "w.bin") == inode(root / "blobs" / name)

    entry = root / "blobs" / name
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as handle:  # bit rot under every link of that inode
        handle.seek(1000)
        handle.write(b"\x00" * 8)
    rotten = inode(entry)
    store.download(storage_key(uris[2]), uris[2], settings={}, options=OPTIONS, progress=lambda _: None)
    c = store.layout(storage_key(uris[2]))
    assert (c.dest / "w.bin").read_bytes() == weights  # not the rotten entry's bytes
    assert inode(entry) != rotten and inode(entry) == inode(c.dest / "w.bin")
    assert entry_intact(root, name)
    # The models holding the rotten inode find it in their scrub (verify_full with BLAKE3), and
    # the scrub evicts nothing that is not theirs.
    assert any("blake3: w.bin" in problem for problem in store.scrub(storage_key(uris[0])))
    assert entry_intact(root, name)

    for uri in uris:
        store.delete(storage_key(uri))
    assert store.collect_blobs().removed == 1 and entries(root) == {}


def test_a_symlink_planted_as_the_blake3_folder_is_never_followed(tmp_path: Path) -> None:
    """Each algorithm's folder is checked like the store itself: a symlink in place of
    `blobs/blake3` takes no entry, lookup or collection elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ("0" * 64)).write_bytes(b"x")  # an unlinked "entry" collection must not touch
    store = content.BlobStore(tmp_path / "blobs")
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "blake3").symlink_to(elsewhere)
    weights = tmp_path / "w.bin"
    weights.write_bytes(random.Random(41).randbytes(content.MIN_SIZE))
    value = blake3.blake3(weights.read_bytes()).hexdigest()
    assert not store.enter(weights, value, "blake3")
    assert store.lookup("0" * 64, 1, "blake3") is None
    assert store.collect().removed == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["0" * 64]
    # The sha256 folder beside it is a real one and still works.
    assert store.enter(weights, hashlib.sha256(weights.read_bytes()).hexdigest())
    assert os.lstat(weights).st_nlink == 2


def test_where_links_fail_files_stay_unshared_and_nothing_fails(
        hf_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first, second = revisions(seed=4)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/nolinks")
    real_link = os.link

    def cross_device(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if "blobs" in str(src) or "blobs" in str(dst):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(content.os, "link", cross_device)
    monkeypatch.setattr(content, "_warned", set())  # "once" is per process: start this test afresh
    root = tmp_path / "root"
    layout_1, _ = fetch(hf_hub, uri_1, root)
    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert files_of(layout_1) == first and files_of(layout_2) == second
    assert entries(root) == {}
    assert bytes_on_disk(root) == sum(map(len, first.values())) + sum(map(len, second.values()))
    warnings = [r for r in caplog.records if "kept unshared" in r.getMessage()]
    assert len(warnings) == 1  # logged once, not per file


def test_a_symlink_planted_as_the_store_is_never_followed(hf_hub: LocalHub, tmp_path: Path) -> None:
    first, second = revisions(seed=8)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/planted")
    root = tmp_path / "root"
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sha256").mkdir(parents=True)
    root.mkdir()
    (root / "blobs").symlink_to(elsewhere)
    layout_1, _ = fetch(hf_hub, uri_1, root)
    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert files_of(layout_1) == first and files_of(layout_2) == second
    assert list((elsewhere / "sha256").iterdir()) == []
    assert (root / "blobs").is_symlink()  # reported in the log, left alone
    assert ModelStore(root).collect_blobs().removed == 0


def test_a_listing_that_names_a_stored_sha256_without_holding_the_bytes_gets_nothing(
        hf_hub: LocalHub, tmp_path: Path) -> None:
    """Another tenant knows the sha256 of a private shard on this node and lists it from an origin
    of his own: the probe fails (his origin cannot send those bytes), the file is fetched from
    his origin like any other and fails its check; not a byte of the stored shard reaches him."""
    first, _ = revisions(seed=9)
    private = "acme/private"
    hf_hub.add_commit(private, first, revision="v1", lfs={k for k in first if k.endswith(".safetensors")})
    root = tmp_path / "root"
    fetch(hf_hub, f"hf://{private}:v1", root)
    shard = sorted(k for k in first if k.endswith(".safetensors"))[0]
    secret_sha = hashlib.sha256(first[shard]).hexdigest()
    decoy = random.Random(99).randbytes(len(first[shard]))
    hf_hub.add_commit("mallory/model", {"stolen.safetensors": decoy}, lfs={"stolen.safetensors"})

    def lying(uri: str, settings: Settings) -> Source:
        inner = open_source(uri, settings)

        class Lying:
            def __init__(self) -> None:
                self.uri = inner.uri

            def list_files(self):  # type: ignore[no-untyped-def]
                from dataclasses import replace

                from localmodel.sources.base import Digest

                listing = inner.list_files()
                return replace(listing, files=tuple(replace(f, digest=Digest("sha256", secret_sha))
                                                    for f in listing.files))

            def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
                return inner.read_range(path, offset, length)

            def close(self) -> None:
                inner.close()

        return Lying()

    uri = "hf://mallory/model"
    with pytest.raises(IntegrityError):
        fetch(hf_hub, uri, root, source_factory=lying)
    layout = Layout.in_store(root, storage_key(uri))
    assert not layout.dest.exists()
    assert os.lstat(root / "blobs" / "sha256" / secret_sha).st_nlink == 2  # the first model and the store
    assert hf_hub.served("mallory/model", "stolen.safetensors")  # fetched from his origin, not linked


# --- crashes between the store and the model -----------------------------------------------------

class Killed(BaseException):
    """Stands for SIGKILL at that line: nothing after it runs (not even `except Exception`)."""


def test_a_crash_between_entering_the_store_and_publishing_resumes_without_fetching(
        hf_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = revisions(seed=5)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/crash-publish")
    root = tmp_path / "root"
    fetch(hf_hub, uri_1, root)
    real_publish = engine._Download._publish

    def die(self: engine._Download, manifest: object) -> None:
        raise Killed()

    monkeypatch.setattr(engine._Download, "_publish", die)
    with pytest.raises(Killed):
        fetch(hf_hub, uri_2, root)
    # Every file is verified in staging; the new shard entered the store (its staging file and
    # the entry are one inode), the tokenizer became a link to the first model's entry.
    staging = root / "staging" / storage_key(uri_2) / "data"
    assert os.lstat(staging / "tokenizer.json").st_nlink == 3
    monkeypatch.setattr(engine._Download, "_publish", real_publish)
    served = hf_hub.bytes_served
    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert hf_hub.bytes_served == served  # nothing fetched again
    assert files_of(layout_2) == second and verify_full(layout_2, read_manifest_of(layout_2)) == []


def test_a_crash_while_linking_a_fetched_file_to_its_entry_leaves_a_verified_copy(
        hf_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = revisions(seed=6)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/crash-share")
    root = tmp_path / "root"
    layout_1, _ = fetch(hf_hub, uri_1, root)
    real_rename = os.rename

    def die_on_the_swap(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if str(src).endswith(".link-share"):
            raise Killed()  # the link exists under its spare name, the fetched copy untouched
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(content.os, "rename", die_on_the_swap)
    with pytest.raises(Killed):
        fetch(hf_hub, uri_2, root)
    monkeypatch.setattr(content.os, "rename", real_rename)
    served = hf_hub.bytes_served
    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert hf_hub.bytes_served == served
    assert files_of(layout_2) == second and verify_full(layout_2, read_manifest_of(layout_2)) == []
    assert inode(layout_1.dest / "tokenizer.json") == inode(layout_2.dest / "tokenizer.json")
    assert not list((root / "staging").glob("*/.link-*"))


def test_a_crash_after_linking_an_entry_into_staging_never_writes_through_it(
        hf_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal line that says a reused file is verified is lost (killed right after the
    link): the next run must not take the link for a partial download and write into it."""
    first, second = revisions(seed=7)
    uri_1, uri_2 = publish(hf_hub, first, second, repo="acme/crash-reuse")
    root = tmp_path / "root"
    layout_1, _ = fetch(hf_hub, uri_1, root)
    real_record = Staging.record_verified

    def die(self: Staging, index: int, sha256: str | None, checked: bool) -> None:
        raise Killed()

    monkeypatch.setattr(Staging, "record_verified", die)
    with pytest.raises(Killed):
        fetch(hf_hub, uri_2, root)
    monkeypatch.setattr(Staging, "record_verified", real_record)
    # A run that does not take files from the store (dedup off) finds the link unjournaled and
    # fetches that file again, from an origin that now sends bad bytes: written through the
    # link, they would land in the entry, hence in the first model's files.
    for name in first:
        if name.endswith(".safetensors") and second[name] == first[name]:
            hf_hub.faults.corrupt[("acme/crash-reuse", name)] = {5}
    with pytest.raises(IntegrityError):
        fetch(hf_hub, uri_2, root, options=FetchOptions(concurrency=4, chunk_size=MiB, dedup=False))
    hf_hub.faults.corrupt.clear()
    for name in entries(root):
        assert entry_intact(root, name)
    assert verify_full(layout_1, read_manifest_of(layout_1)) == []
    layout_2, _ = fetch(hf_hub, uri_2, root)
    assert files_of(layout_2) == second and files_of(layout_1) == first
    assert verify_full(layout_1, read_manifest_of(layout_1)) == []


# --- OCI: tags sharing layers, and a modelcar and a ModelPack of the same files ------------------

def weights(seed: int, names: tuple[str, ...] = ("a.safetensors", "b.safetensors", "c.safetensors")) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {name: rnd.randbytes(MiB + 17 * i) for i, name in enumerate(names)}


def oci_fetch(uri: str, root: Path, counting: Counting) -> Layout:
    layout = Layout.in_store(root, storage_key(uri))
    download(uri, layout, options=OPTIONS, source_factory=counting.open)
    return layout


def test_two_tags_sharing_layers_fetch_only_the_new_blobs(oci_registry: Registry, tmp_path: Path) -> None:
    files = weights(11)
    v2 = {**files, "c.safetensors": random.Random(12).randbytes(MiB), "config.json": b"{}"}
    push_modelpack(oci_registry, tmp_path / "push1", "dedup/pack:v1", files)
    push_modelpack(oci_registry, tmp_path / "push2", "dedup/pack:v2", v2)
    root = tmp_path / "root"
    first = Counting()
    layout_1 = oci_fetch(f"oci://{oci_registry.host}/dedup/pack:v1", root, first)
    assert first.read == sum(map(len, files.values()))
    second = Counting()
    layout_2 = oci_fetch(f"oci://{oci_registry.host}/dedup/pack:v2", root, second)
    # Only the new blobs crossed the network (the changed weight and the config), and a probe of
    # each shared one.
    assert second.read == len(v2["c.safetensors"]) + len(v2["config.json"]) + 2 * content.PROBE_SIZE
    assert files_of(layout_1) == files and files_of(layout_2) == v2
    for name in ("a.safetensors", "b.safetensors"):
        assert inode(layout_1.dest / name) == inode(layout_2.dest / name)
    union = {hashlib.sha256(v).hexdigest(): len(v) for v in [*files.values(), *v2.values()]}
    assert bytes_on_disk(root) == sum(union.values())


def test_a_modelcar_and_a_modelpack_of_the_same_files_share_them_on_disk(
        oci_registry: Registry, tmp_path: Path) -> None:
    files = weights(21)
    push_modelpack(oci_registry, tmp_path / "push", "dedup/pack:same", files)
    car = layer_tar(tmp_path / "car.tar", [member("models", kind=tarfile.DIRTYPE),
                                           *[member(f"models/{k}", v) for k, v in files.items()]])
    push_modelcar(oci_registry, "dedup/car:same", car)
    root = tmp_path / "root"
    pack = oci_fetch(f"oci://{oci_registry.host}/dedup/pack:same", root, Counting())
    modelcar = oci_fetch(f"oci://{oci_registry.host}/dedup/car:same", root, Counting())
    assert files_of(pack) == files_of(modelcar) == files
    for name in files:
        assert inode(pack.dest / name) == inode(modelcar.dest / name)
    assert bytes_on_disk(root) == sum(map(len, files.values()))
    # The modelcar's layer (a gzip tar, not a model file) is not kept in the store.
    assert set(entries(root)) == {"sha256/" + hashlib.sha256(v).hexdigest() for v in files.values()}


# --- S3: full-object SHA-256 checksums -----------------------------------------------------------

def test_s3_objects_with_sha256_checksums_are_not_fetched_twice(moto_s3: S3Server, tmp_path: Path) -> None:
    client = moto_s3.client()
    client.create_bucket(Bucket="dedup")
    files = weights(41)
    for prefix in ("v1", "v2"):
        for name, data in files.items():
            body = data if prefix == "v1" or name != "c.safetensors" else data[::-1]
            client.put_object(Bucket="dedup", Key=f"{prefix}/{name}", Body=body, ChecksumAlgorithm="SHA256")
    # One object without a SHA-256 (boto3 uploads a CRC32 by default): fetched and verified with
    # that CRC alone (one hash pass per byte, issue 14), so it has no sha256 and stays unshared.
    client.put_object(Bucket="dedup", Key="v2/copy-of-a.bin", Body=files["a.safetensors"])
    root = tmp_path / "root"
    layouts = {}
    counts = {}
    for prefix in ("v1", "v2"):
        counting = Counting()
        uri = f"s3://dedup/{prefix}"
        layouts[prefix] = Layout.in_store(root, storage_key(uri))
        download(uri, layouts[prefix], settings=moto_s3.settings(), options=OPTIONS, source_factory=counting.open)
        counts[prefix] = counting.read
    assert counts["v1"] == sum(map(len, files.values()))
    # The changed object, the one without a checksum, and a probe of each of the two reused.
    assert counts["v2"] == len(files["c.safetensors"]) + len(files["a.safetensors"]) + 2 * content.PROBE_SIZE
    v1, v2 = layouts["v1"].dest, layouts["v2"].dest
    assert inode(v1 / "a.safetensors") == inode(v2 / "a.safetensors") != inode(v2 / "copy-of-a.bin")
    assert (v2 / "copy-of-a.bin").read_bytes() == files["a.safetensors"]
    assert inode(v1 / "b.safetensors") == inode(v2 / "b.safetensors")
    assert (v2 / "c.safetensors").read_bytes() == files["c.safetensors"][::-1]
    assert bytes_on_disk(root) == sum(map(len, files.values())) + len(files["c.safetensors"]) + len(
        files["a.safetensors"])


def test_a_second_tag_of_a_modelcar_links_the_first_ones_model_after_a_probe(
        oci_registry: Registry, tmp_path: Path) -> None:
    """A modelcar's layers are tar archives, not model files, so they are not kept; a second tag
    of the same image (same layers) is built from the first one's files instead, once its
    registry has answered the probe recorded with them."""
    files = weights(51)
    car = layer_tar(tmp_path / "car.tar", [member("models", kind=tarfile.DIRTYPE),
                                           member("models/config.json", b"{}"),
                                           *[member(f"models/{k}", v) for k, v in files.items()]])
    push_modelcar(oci_registry, "dedup/car:one", car)
    oci_registry.crane("tag", f"{oci_registry.host}/dedup/car:one", "two")
    root = tmp_path / "root"
    first = Counting()
    one = oci_fetch(f"oci://{oci_registry.host}/dedup/car:one", root, first)
    second = Counting()
    two = oci_fetch(f"oci://{oci_registry.host}/dedup/car:two", root, second)
    assert files_of(one) == files_of(two) == {**files, "config.json": b"{}"}
    assert second.read == content.PROBE_SIZE  # the probe of the layer, nothing else
    for name in files:
        assert inode(one.dest / name) == inode(two.dest / name)
    assert os.lstat(two.dest / "config.json").st_ino != os.lstat(one.dest / "config.json").st_ino
    assert verify_full(two, read_manifest_of(two)) == []
    assert bytes_on_disk(root) == sum(map(len, files.values())) + 2 * len(b"{}")

    # A registry that cannot answer the probe gets the layers fetched like any download.
    class Refusing(Counting):
        def open(self, uri: str, settings: Settings) -> Source:
            source = super().open(uri, settings)
            real = source.read_range

            def read_range(path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
                for piece in real(path, offset, length):
                    yield bytes(len(piece)) if length == content.PROBE_SIZE else piece

            source.read_range = read_range  # type: ignore[method-assign]
            return source

    oci_registry.crane("tag", f"{oci_registry.host}/dedup/car:one", "three")
    third = Refusing()
    three = oci_fetch(f"oci://{oci_registry.host}/dedup/car:three", root, third)
    assert third.read == content.PROBE_SIZE + first.read  # the failed probe, then every blob
    assert files_of(three) == files_of(one)
    for name in files:  # shared on disk all the same, at publish
        assert inode(three.dest / name) == inode(one.dest / name)
