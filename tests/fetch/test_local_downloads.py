"""The engine end to end on local sources: layouts, manifests, re-runs, verification."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from localmodel.errors import SourceNotFoundError, UnsafePathError
from localmodel.fetch import (
    FetchOptions,
    Layout,
    download,
    read_manifest,
    verify_full,
    verify_quick,
)
from localmodel.fetch.progress import Progress
from tests.fetch.models import NESTED, SMALL_CHUNKS, all_paths, content, local_digest, read_tree, write_tree


def test_nested_model_is_copied_byte_exact_with_manifest(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "out" / "model"
    seen: list[Progress] = []
    manifest = download(str(source), dest, options=SMALL_CHUNKS, progress=seen.append)

    assert read_tree(dest) == NESTED
    assert {f.path: f.scrub_digest for f in manifest.files} == {
        path: local_digest(data) for path, data in NESTED.items()}
    assert manifest.total_size == sum(map(len, NESTED.values()))
    assert manifest.source == str(source)
    # The manifest sits beside the folder, never inside it, and staging is gone.
    layout = Layout.beside(dest)
    assert layout.manifest == tmp_path / "out" / ".localmodel" / "manifests" / "model.json"
    assert read_manifest(layout) == manifest
    assert json.loads(layout.manifest.read_text())["files"]
    assert not layout.staging.exists()
    assert verify_quick(layout, manifest) == []
    assert verify_full(layout, manifest) == []
    assert seen[-1].phase == "done" and seen[-1].bytes_done == manifest.total_size
    assert seen[-1].files_done == len(NESTED)


def test_rerun_of_a_complete_model_does_not_touch_the_source(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    first = download(str(source), dest, options=SMALL_CHUNKS)
    for path in source.rglob("*"):
        if path.is_file():
            path.unlink()
    assert download(str(source), dest, options=SMALL_CHUNKS) == first
    with pytest.raises(SourceNotFoundError):
        download(str(source), dest, options=FetchOptions(force=True, fsync=False))
    assert read_tree(dest) == NESTED  # a failed forced run leaves the good copy alone


def test_a_manifest_written_with_sha256_before_blake3_still_verifies_and_is_kept(tmp_path: Path) -> None:
    """Manifests of files hashed with sha256 for the manifest alone (plain HTTP, file://, before
    BLAKE3 became that digest) keep their meaning: a scrub recomputes their sha256, and a rerun
    takes the folder as complete instead of fetching it again."""
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    layout = Layout.beside(dest)
    download(str(source), dest, options=SMALL_CHUNKS)
    raw = json.loads(layout.manifest.read_text())
    for item in raw["files"]:  # what the engine wrote before: a sha256, no local_digest
        assert item.pop("local_digest")["algorithm"] == "blake3" and item["sha256"] is None
        item["sha256"] = hashlib.sha256(NESTED[item["path"]]).hexdigest()
    layout.manifest.write_text(json.dumps(raw))
    old = read_manifest(layout)
    assert old is not None and all(f.local is None and f.scrub_digest.algorithm == "sha256" for f in old.files)
    assert verify_full(layout, old) == []
    assert download(str(source), dest, options=SMALL_CHUNKS) == old  # complete: kept as it is
    target = dest / "weights/model-00002-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    assert verify_full(layout, old) == [
        f"sha256: weights/model-00002-of-00002.safetensors is {hashlib.sha256(data).hexdigest()}, "
        f"manifest says {hashlib.sha256(NESTED['weights/model-00002-of-00002.safetensors']).hexdigest()}"]


def test_verification_finds_tampering(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    manifest = download(str(source), dest, options=SMALL_CHUNKS)
    layout = Layout.beside(dest)
    target = dest / "weights/model-00002-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 1
    target.write_bytes(bytes(data))
    assert verify_quick(layout, manifest) == []  # same size: only a full check sees it
    assert verify_full(layout, manifest) == [
        f"blake3: weights/model-00002-of-00002.safetensors is "
        f"{local_digest(bytes(data)).value}, manifest says "
        f"{local_digest(NESTED['weights/model-00002-of-00002.safetensors']).value}"]
    (dest / "config.json").unlink()
    (dest / "intruder.py").write_text("print('hi')")
    (dest / "empty.txt").write_text("no longer empty")
    problems = verify_quick(layout, manifest)
    assert "missing: config.json" in problems
    assert "unexpected: intruder.py" in problems
    assert any(p.startswith("size: empty.txt") for p in problems)
    # A tampered copy is no longer "complete": the next download replaces it.
    again = download(str(source), dest, options=SMALL_CHUNKS)
    assert read_tree(dest) == NESTED
    assert again.files == manifest.files


def test_store_layout_keeps_manifest_and_staging_out_of_models(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    layout = Layout.in_store(tmp_path / "root", "0123456789abcdef")
    download(str(source), layout, options=SMALL_CHUNKS)
    assert os.listdir(tmp_path / "root" / "models") == ["0123456789abcdef"]
    assert (tmp_path / "root" / "manifests" / "0123456789abcdef.json").is_file()
    assert read_tree(layout.dest) == NESTED
    assert not layout.staging.exists()


def test_incomplete_destination_is_replaced_whole(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    write_tree(dest, {"config.json": b"half", "stale/leftover.bin": b"x"})
    download(str(source), dest, options=SMALL_CHUNKS)
    assert read_tree(dest) == NESTED


def test_inside_layout_for_mount_points(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = write_tree(tmp_path / "mnt-models", {"old.bin": b"old"})
    layout = Layout.inside(dest)
    manifest = download(str(source), layout, options=SMALL_CHUNKS)
    assert read_tree(dest, skip_hidden=True) == NESTED
    assert layout.manifest == dest / ".localmodel" / "manifest.json"
    assert verify_quick(layout, manifest) == []
    assert not layout.staging.exists()


def test_patterns_select_files(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    options = FetchOptions(allow_patterns=("weights/", "*.json"), ignore_patterns=("*-00002-of-*",),
                           fsync=False)
    manifest = download(str(source), tmp_path / "m", options=options)
    assert sorted(f.path for f in manifest.files) == [
        "config.json", "weights/model-00001-of-00002.safetensors"]
    assert sorted(read_tree(tmp_path / "m")) == sorted(f.path for f in manifest.files)
    with pytest.raises(SourceNotFoundError, match="patterns"):
        download(str(source), tmp_path / "n", options=FetchOptions(allow_patterns=("*.gguf",)))


def test_single_file_and_file_uri_and_pvc(tmp_path: Path) -> None:
    data = content("single", 200_000)
    write_tree(tmp_path / "vol", {"models/llm/model.gguf": data})
    file_uri = f"file://{tmp_path}/vol/models/llm/model.gguf"
    download(file_uri, tmp_path / "a", options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "a") == {"model.gguf": data}
    settings = {"LOCALMODEL_PVC_ROOT": str(tmp_path / "vol")}
    download("pvc://my-claim/models/llm", tmp_path / "b", settings=settings, options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "b") == {"model.gguf": data}
    per_claim = {"LOCALMODEL_PVC_ROOT": str(tmp_path / "{claim}")}
    download("pvc://vol/models", tmp_path / "c", settings=per_claim, options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "c") == {"llm/model.gguf": data}


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError):
        download(str(tmp_path / "nope"), tmp_path / "m")
    assert {p for p in all_paths(tmp_path) if not p.startswith(".localmodel")} == set()


def test_symlinks_inside_are_copied_and_escaping_ones_refused(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"real/weights.bin": b"w" * 1000})
    (source / "alias.bin").symlink_to("real/weights.bin")
    download(str(source), tmp_path / "ok", options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "ok") == {"real/weights.bin": b"w" * 1000,
                                          "alias.bin": b"w" * 1000}
    assert not (tmp_path / "ok" / "alias.bin").is_symlink()

    (tmp_path / "secret").write_text("host secret")
    (source / "leak.txt").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError, match="leak.txt"):
        download(str(source), tmp_path / "bad", options=SMALL_CHUNKS)
    assert not (tmp_path / "bad").exists()
    # The operator can allow it explicitly.
    download(str(source), tmp_path / "followed", settings={"LOCALMODEL_FILE_SYMLINKS": "follow"},
             options=SMALL_CHUNKS)
    assert (tmp_path / "followed" / "leak.txt").read_text() == "host secret"


def test_concurrent_downloads_of_one_destination_serialize(tmp_path: Path) -> None:
    import threading

    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    results: list[object] = []
    options = FetchOptions(concurrency=2, chunk_size=64 * 1024, rate_limit=2_000_000, fsync=False)

    def run() -> None:
        try:
            results.append(download(str(source), dest, options=options))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len({id(r) for r in results}) == 3
    assert all(not isinstance(r, Exception) for r in results), results
    assert results[0] == results[1] == results[2]  # the later ones found the first's manifest
    assert read_tree(dest) == NESTED


def test_without_verification_sizes_are_checked_and_nothing_is_vouched_for(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    options = FetchOptions(verify=False, chunk_size=SMALL_CHUNKS.chunk_size, fsync=False)
    manifest = download(str(source), dest, options=options)
    assert read_tree(dest) == NESTED
    assert all(f.sha256 is None and not f.digest_checked for f in manifest.files)
    layout = Layout.beside(dest)
    assert read_manifest(layout) == manifest  # null sha256 survives the JSON round trip
    assert verify_quick(layout, manifest) == []
    problems = verify_full(layout, manifest)
    assert len(problems) == len(NESTED) and all("unverifiable" in p for p in problems)
    # A verifying run does not take the unverified copy as complete: it hashes a fresh one.
    verified = download(str(source), dest, options=SMALL_CHUNKS)
    assert {f.path: f.scrub_digest for f in verified.files} == {
        path: local_digest(data) for path, data in NESTED.items()}
    assert verify_full(layout, verified) == []
