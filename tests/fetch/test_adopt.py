"""Adoption: a folder that holds the model without a manifest (KServe's agent's folders) is kept
after a full hash, never downloaded again; anything that does not match is downloaded as usual.

The "downloaded again" cases are told apart from adoption by the files' inodes: adoption keeps
the folder's own files, a download publishes new ones.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from localmodel.fetch import FetchOptions, Layout, adopt, download, read_manifest, verify_full
from localmodel.fetch.progress import Progress
from tests.fetch.models import NESTED, SMALL_CHUNKS, content, local_digest, read_tree, write_tree
from tests.servers.s3 import S3Server

KiB = 1024
OPTIONS = SMALL_CHUNKS


def inodes(root: Path) -> dict[str, int]:
    return {path.relative_to(root).as_posix(): path.stat().st_ino for path in root.rglob("*") if path.is_file()}


def kserve_folder(dest: Path, files: dict[str, bytes] = NESTED) -> dict[str, int]:
    """What a storage-initializer Job leaves: the files, no manifest."""
    write_tree(dest, files)
    return inodes(dest)


def test_folder_with_the_listed_files_is_adopted_not_downloaded(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "models" / "model"
    before = kserve_folder(dest)
    seen: list[Progress] = []
    manifest = download(str(source), dest, options=OPTIONS, progress=seen.append)

    assert inodes(dest) == before  # the very same files
    assert read_tree(dest) == NESTED
    assert manifest.details["adopted"] == "true"
    assert {f.path: f.scrub_digest for f in manifest.files} == {p: local_digest(d) for p, d in NESTED.items()}
    layout = Layout.beside(dest)
    assert read_manifest(layout) == manifest
    assert verify_full(layout, manifest) == []
    assert seen and {p.phase for p in seen} == {"verify"}
    assert seen[-1].bytes_done == seen[-1].bytes_total == manifest.total_size
    # and from now on it is simply complete
    assert download(str(source), dest, options=OPTIONS) == manifest


def test_adopt_alone_in_the_store_layout(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    layout = Layout.in_store(tmp_path / "root", "0123456789abcdef")
    before = kserve_folder(layout.dest)
    manifest = adopt(str(source), layout, options=OPTIONS)
    assert manifest is not None and inodes(layout.dest) == before
    assert layout.manifest == tmp_path / "root" / "manifests" / "0123456789abcdef.json"
    assert read_manifest(layout) == manifest
    # nothing left to adopt once a manifest exists
    assert adopt(str(source), layout, options=OPTIONS) is None


@pytest.mark.parametrize("change", ["missing", "size", "extra", "symlink"])
def test_folder_that_differs_is_downloaded(tmp_path: Path, change: str) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    kserve_folder(dest)
    if change == "missing":
        (dest / "config.json").unlink()
    elif change == "size":
        (dest / "tokenizer/deep/er/vocab.txt").write_bytes(content("c", 4999))
    elif change == "extra":
        (dest / "stray.bin").write_bytes(b"not in the source")
    else:
        target = dest / "weights" / "model-00002-of-00002.safetensors"
        real = tmp_path / "elsewhere.bin"
        shutil.move(target, real)
        target.symlink_to(real)
    assert adopt(str(source), dest, options=OPTIONS) is None
    before = inodes(dest)
    manifest = download(str(source), dest, options=OPTIONS)
    assert "adopted" not in manifest.details
    assert read_tree(dest) == NESTED
    assert not set(before.items()) & set(inodes(dest).items())  # every file is a new one


def test_hugging_face_bookkeeping_is_tolerated_and_removed(tmp_path: Path) -> None:
    """snapshot_download(local_dir=...) leaves .cache/huggingface/ in the folder."""
    source = write_tree(tmp_path / "src", NESTED)
    dest = tmp_path / "model"
    before = kserve_folder(dest)
    write_tree(dest, {".cache/huggingface/.gitignore": b"*\n",
                      ".cache/huggingface/download/config.json.metadata": b"abc\n123\n"})
    manifest = download(str(source), dest, options=OPTIONS)
    assert manifest.details["adopted"] == "true"
    assert inodes(dest) == before
    assert not (dest / ".cache").exists()


def test_model_files_under_dot_cache_are_not_taken_for_bookkeeping(tmp_path: Path) -> None:
    files = {**NESTED, ".cache/huggingface/kept.txt": b"part of the model"}
    source = write_tree(tmp_path / "src", files)
    dest = tmp_path / "model"
    before = kserve_folder(dest, files)
    manifest = download(str(source), dest, options=OPTIONS)
    assert manifest.details["adopted"] == "true" and inodes(dest) == before
    assert read_tree(dest) == files


def test_a_manifest_for_another_source_blocks_adoption(tmp_path: Path) -> None:
    first = write_tree(tmp_path / "first", NESTED)
    second = write_tree(tmp_path / "second", NESTED)  # same files, another URI
    dest = tmp_path / "model"
    download(str(first), dest, options=OPTIONS)
    assert adopt(str(second), dest, options=OPTIONS) is None
    manifest = download(str(second), dest, options=OPTIONS)
    assert manifest.source == str(second) and "adopted" not in manifest.details


def test_force_and_adopt_false_download(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", NESTED)
    for options in (FetchOptions(force=True, fsync=False), FetchOptions(adopt=False, fsync=False)):
        dest = tmp_path / f"model-{uuid.uuid4().hex[:6]}"
        before = kserve_folder(dest)
        manifest = download(str(source), dest, options=options)
        assert "adopted" not in manifest.details
        assert not set(before.items()) & set(inodes(dest).items())


def test_single_archive_model_is_not_adopted(tmp_path: Path) -> None:
    """KServe unpacked it: the listing (one archive) cannot vouch for the unpacked files."""
    import tarfile

    source = tmp_path / "src"
    source.mkdir()
    with tarfile.open(source / "model.tar.gz", "w:gz") as archive:
        for name, data in NESTED.items():
            path = tmp_path / "plain" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            archive.add(path, arcname=name)
    dest = tmp_path / "model"
    kserve_folder(dest)
    assert adopt(str(source), dest, options=OPTIONS) is None
    manifest = download(str(source), dest, options=OPTIONS)
    assert manifest.archive is not None and "adopted" not in manifest.details


# --- provider digests: S3 ETags (md5) must match too ----------------------------------------


@pytest.fixture
def s3_model(moto_s3: S3Server) -> tuple[str, dict[str, str], dict[str, bytes]]:
    bucket = f"adopt-{uuid.uuid4().hex[:8]}"
    client = moto_s3.client()
    client.create_bucket(Bucket=bucket)
    files = {"config.json": b'{"a": 1}', "model.safetensors": content("s3", 200 * KiB)}
    for path, data in files.items():
        client.put_object(Bucket=bucket, Key=f"llm/{path}", Body=data)
    return f"s3://{bucket}/llm", moto_s3.settings(), files


def test_s3_folder_is_adopted_with_etags_checked(tmp_path: Path,
                                                 s3_model: tuple[str, dict[str, str], dict[str, bytes]]) -> None:
    uri, settings, files = s3_model
    dest = tmp_path / "model"
    before = kserve_folder(dest, files)
    manifest = download(uri, dest, settings=settings, options=OPTIONS)
    assert manifest.details["adopted"] == "true" and inodes(dest) == before
    assert all(f.digest is not None and f.digest_checked for f in manifest.files)


def test_same_size_other_bytes_fail_the_etag_and_are_downloaded(
        tmp_path: Path, s3_model: tuple[str, dict[str, str], dict[str, bytes]]) -> None:
    uri, settings, files = s3_model
    dest = tmp_path / "model"
    damaged = bytearray(files["model.safetensors"])
    damaged[1000] ^= 1
    kserve_folder(dest, {**files, "model.safetensors": bytes(damaged)})
    assert adopt(uri, dest, settings=settings, options=OPTIONS) is None
    manifest = download(uri, dest, settings=settings, options=OPTIONS)
    assert "adopted" not in manifest.details
    assert read_tree(dest) == files
    assert not os.path.exists(dest / ".cache")
