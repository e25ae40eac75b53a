"""fetch/layers.py on its own: layers applied in order to a folder, without a registry (the
registry tests in tests/sources/test_oci.py push real images; these pin the corner cases)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from localmodel.errors import UnsafePathError
from localmodel.fetch.layers import assemble
from localmodel.sources.base import Layer

DIR, FILE, LINK = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE


def tar(members: list[tuple[str, bytes, bytes | str]], *, compress: bool = False) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == LINK:
                info.linkname = str(data)
                archive.addfile(info)
            elif kind == DIR:
                archive.addfile(info)
            else:
                assert isinstance(data, bytes)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    raw = buffer.getvalue()
    return gzip.compress(raw) if compress else raw


def build(tmp_path: Path, blobs: dict[str, bytes], layers: list[Layer], *, ratio: float = 1000.0) -> dict[str, bytes]:
    store = tmp_path / "blobs"
    store.mkdir()
    for name, data in blobs.items():
        (store / name).write_bytes(data)
    into = tmp_path / "model"
    into.mkdir()
    hashes = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in blobs.items()}
    files = assemble(layers, lambda blob: store / blob, hashes, into, max_ratio=ratio, free_bytes=2**40)
    on_disk = {p.relative_to(into).as_posix(): p.read_bytes() for p in into.rglob("*") if p.is_file()}
    assert {f.path for f in files} == set(on_disk)
    assert all(f.sha256 == hashlib.sha256(on_disk[f.path]).hexdigest() for f in files)
    return on_disk


def image(blob: str, *, compression: str = "") -> Layer:
    return Layer(blob=blob, kind="tar", subtree="models", compression=compression, whiteouts=True)


def test_whiting_out_the_models_folder_removes_everything_before(tmp_path: Path) -> None:
    first = tar([("models", DIR, b""), ("models/a", FILE, b"a"), ("models/d/b", FILE, b"b")])
    second = tar([(".wh.models", FILE, b""), ("models/c", FILE, b"c")])
    assert build(tmp_path, {"1": first, "2": second}, [image("1"), image("2")]) == {"c": b"c"}


def test_an_opaque_root_keeps_only_this_layers_files(tmp_path: Path) -> None:
    first = tar([("models/a", FILE, b"a"), ("models/d/b", FILE, b"b")])
    second = tar([("models/new", FILE, b"n"), ("models/.wh..wh..opq", FILE, b"")])
    assert build(tmp_path, {"1": first, "2": second}, [image("1"), image("2")]) == {"new": b"n"}


def test_a_later_layer_turns_a_file_into_a_folder_and_back(tmp_path: Path) -> None:
    first = tar([("models/x", FILE, b"file"), ("models/y/inner", FILE, b"i")])
    second = tar([("models/x/inside", FILE, b"now a folder"), ("models/y", FILE, b"now a file")],
                 compress=True)
    result = build(tmp_path, {"1": first, "2": second}, [image("1"), image("2", compression="gzip")])
    assert result == {"x/inside": b"now a folder", "y": b"now a file"}


def test_a_hard_link_to_a_file_of_an_earlier_layer_is_a_copy_of_its_bytes(tmp_path: Path) -> None:
    first = tar([("models/w.bin", FILE, b"weights")])
    second = tar([("models/alias.bin", LINK, "models/w.bin")])
    result = build(tmp_path, {"1": first, "2": second}, [image("1"), image("2")])
    assert result == {"w.bin": b"weights", "alias.bin": b"weights"}


def test_modelpack_raw_and_tar_layers_land_at_their_paths(tmp_path: Path) -> None:
    named_with_path = tar([("tok", DIR, b""), ("tok/vocab.txt", FILE, b"v")])
    named_relative = tar([("merges.txt", FILE, b"m")])
    blobs = {"raw": b"weights", "t1": named_with_path, "t2": named_relative}
    layers = [Layer(blob="raw", kind="file", path="w/model.bin"),
              Layer(blob="t1", kind="tar", path="tok"), Layer(blob="t2", kind="tar", path="extra")]
    assert build(tmp_path, blobs, layers) == {"w/model.bin": b"weights", "tok/vocab.txt": b"v",
                                              "extra/merges.txt": b"m"}


def test_the_same_raw_blob_at_two_paths_is_linked_twice(tmp_path: Path) -> None:
    layers = [Layer(blob="b", kind="file", path="a.bin"), Layer(blob="b", kind="file", path="copy/a.bin")]
    assert build(tmp_path, {"b": b"same"}, layers) == {"a.bin": b"same", "copy/a.bin": b"same"}


@pytest.mark.parametrize("layers", [
    [Layer(blob="b", kind="file", path="a.bin"), Layer(blob="b", kind="file", path="a.bin")],
    [Layer(blob="b", kind="file", path="a"), Layer(blob="b", kind="file", path="a/b")],
    [Layer(blob="b", kind="file", path="../escape")],
    [Layer(blob="b", kind="file", path="/abs")],
    [Layer(blob="b", kind="file", path="A.bin"), Layer(blob="b", kind="file", path="a.bin")],
], ids=["same-path", "file-and-folder", "dotdot", "absolute", "case-collision"])
def test_modelpack_paths_that_collide_or_escape_are_refused(tmp_path: Path, layers: list[Layer]) -> None:
    with pytest.raises(UnsafePathError):
        build(tmp_path, {"b": b"x"}, layers)
    assert not (tmp_path / "escape").exists() and not Path("/abs").exists()


def test_a_layer_that_expands_beyond_the_ratio_is_a_bomb(tmp_path: Path) -> None:
    bomb = gzip.compress(tar([("models/zeros", FILE, bytes(8 * 2**20))]))
    with pytest.raises(UnsafePathError, match="bomb"):
        build(tmp_path, {"1": bomb}, [image("1", compression="gzip")], ratio=10)
