"""Single-archive models are unpacked like KServe does, and hostile archives are refused
without writing anything outside the destination."""

from __future__ import annotations

import io
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from localmodel.errors import IntegrityError, UnsafePathError
from localmodel.fetch import FetchOptions, Layout, download, verify_full
from localmodel.fetch.archive import archive_kind
from tests.fetch.models import NESTED, SMALL_CHUNKS, all_paths, read_tree, tar_bytes, zip_bytes
from tests.servers.nginx import NginxServer


@pytest.mark.parametrize("name, kind", [
    ("m.zip", "zip"), ("m.tar", "tar"), ("m.tar.gz", "tar"), ("M.TGZ", "tar"),
    ("m.tar.bz2", "tar"), ("m.tar.xz", "tar"), ("m.gz", None), ("m.safetensors", None),
])
def test_archive_kinds(name: str, kind: str | None) -> None:
    assert archive_kind(name) == kind


@pytest.mark.parametrize("name, mode", [
    ("model.tar.gz", "w:gz"), ("model.tgz", "w:gz"), ("model.tar", "w"),
    ("model.tar.bz2", "w:bz2"), ("model.tar.xz", "w:xz"),
])
def test_tar_models_are_unpacked(tmp_path: Path, name: str, mode: str) -> None:
    members = [("./" + path, data) for path, data in NESTED.items()]
    (tmp_path / name).write_bytes(tar_bytes(members, mode))
    manifest = download(str(tmp_path / name), tmp_path / "m", options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "m") == NESTED
    assert manifest.archive is not None and manifest.archive.path == name
    assert sorted(f.path for f in manifest.files) == sorted(NESTED)
    assert verify_full(Layout.beside(tmp_path / "m"), manifest) == []


def test_zip_model_is_unpacked_with_folders(tmp_path: Path) -> None:
    (tmp_path / "model.zip").write_bytes(zip_bytes({"weights/": b"", **NESTED}))
    manifest = download(str(tmp_path / "model.zip"), tmp_path / "m", options=SMALL_CHUNKS)
    assert read_tree(tmp_path / "m") == NESTED
    assert manifest.total_size == sum(map(len, NESTED.values()))


def _symlink(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


HOSTILE_TARS: dict[str, list[tarfile.TarInfo | tuple[str, bytes]]] = {
    "dotdot": [("ok.txt", b"fine"), ("../x", b"escaped")],
    "absolute": [("/abs", b"escaped")],
    "nested-dotdot": [("a/../../b", b"escaped")],
    "symlink": [_symlink("link", "/etc/passwd")],
    "symlink-then-write": [_symlink("d", ".."), ("d/escaped", b"x")],
    "hardlink": [("a", b"x"), _symlink("b", "/etc/passwd", tarfile.LNKTYPE)],
    "device": [_device("dev")],
    "duplicate": [("w.bin", b"one"), ("w.bin", b"two")],
    "case-collision": [("W.bin", b"one"), ("w.bin", b"two")],
    "file-and-folder": [("a", b"file"), ("a/b", b"below a file")],
    "backslash": [("..\\..\\x", b"escaped")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_members_are_refused_locally(tmp_path: Path, case: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.tar.gz").write_bytes(tar_bytes(HOSTILE_TARS[case]))
    before = all_paths(tmp_path)
    with pytest.raises(UnsafePathError):
        download(str(tmp_path / "src" / "model.tar.gz"), tmp_path / "out" / "m",
                 options=SMALL_CHUNKS)
    after = all_paths(tmp_path)
    # Nothing outside the staging area appeared, and the destination does not exist.
    assert not (tmp_path / "out" / "m").exists()
    assert {p for p in after - before if not p.startswith("out/.localmodel")} <= {"out"}
    assert not any(p.endswith(("x", "b", "abs", "escaped")) and "staging" not in p
                   for p in after - before)


def test_hostile_zip_members_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("ok.txt", b"fine")
        bundle.writestr("../../evil.txt", b"escaped")
    (tmp_path / "m.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePathError):
        download(str(tmp_path / "m.zip"), tmp_path / "out", options=SMALL_CHUNKS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "evil.txt").exists()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        link = zipfile.ZipInfo("link")
        link.external_attr = (0o120777 << 16)
        bundle.writestr(link, "/etc/passwd")
    (tmp_path / "l.zip").write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePathError, match="link"):
        download(str(tmp_path / "l.zip"), tmp_path / "out2", options=SMALL_CHUNKS)


def test_zip_bomb_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "bomb.zip").write_bytes(zip_bytes({"zeros.bin": bytes(20 * 1024 * 1024)}))
    options = FetchOptions(max_unpack_ratio=100, fsync=False)
    with pytest.raises(UnsafePathError, match="bomb"):
        download(str(tmp_path / "bomb.zip"), tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()


def test_tar_bomb_is_bounded_while_streaming(tmp_path: Path) -> None:
    (tmp_path / "bomb.tar.gz").write_bytes(tar_bytes([("zeros.bin", bytes(20 * 1024 * 1024))]))
    options = FetchOptions(max_unpack_ratio=100, fsync=False)
    with pytest.raises(UnsafePathError, match="bomb"):
        download(str(tmp_path / "bomb.tar.gz"), tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()


def test_corrupt_archive_is_an_integrity_error(tmp_path: Path) -> None:
    good = tar_bytes([("w.bin", b"x" * 100_000)])
    (tmp_path / "m.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(IntegrityError, match="corrupt"):
        download(str(tmp_path / "m.tar.gz"), tmp_path / "out", options=SMALL_CHUNKS)
    assert not (tmp_path / "out").exists()


def test_hostile_archive_over_https_writes_nothing_outside(nginx: NginxServer,
                                                           tmp_path: Path) -> None:
    folder = uuid.uuid4().hex
    (nginx.root / folder).mkdir()
    (nginx.root / folder / "model.tgz").write_bytes(tar_bytes(HOSTILE_TARS["nested-dotdot"]))
    (nginx.root / folder / "good.tgz").write_bytes(tar_bytes(list(NESTED.items())))
    settings = {"LOCALMODEL_HTTP_CA_BUNDLE": str(nginx.ca_bundle)}
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(UnsafePathError):
        download(f"{nginx.https_url}/{folder}/model.tgz", dest, settings=settings,
                 options=SMALL_CHUNKS)
    assert not dest.exists()
    assert not (tmp_path / "b").exists() and not (tmp_path / "deep" / "b").exists()
    download(f"{nginx.https_url}/{folder}/good.tgz", dest, settings=settings, options=SMALL_CHUNKS)
    assert read_tree(dest) == NESTED
