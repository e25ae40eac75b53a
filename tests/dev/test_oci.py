"""dev/oci.py: OCI image-layout archives read back with tarfile, every digest checked, and the
same trees giving the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from localmodel.dev.oci import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_MANIFEST,
    ImageConfig,
    Layer,
    split_reference,
    write_image,
)

EPOCH = 1_700_000_000
CONFIG = ImageConfig(
    entrypoint=("localmodel",),
    cmd=("--help",),
    env=("PATH=/opt/localmodel/bin:/usr/bin:/bin", "HOME=/tmp"),
    user="1000:1000",
    working_dir="/tmp",
    labels={"org.opencontainers.image.title": "localmodel"},
    architecture="amd64",
)


def _make_rootfs(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr" / "bin" / "python3.11").write_bytes(b"\x7fELF not really")
    (root / "usr" / "bin" / "python3.11").chmod(0o755)
    (root / "usr" / "bin" / "python3").symlink_to("python3.11")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.link(root / "etc" / "passwd", root / "etc" / "passwd-")
    (root / "bin").symlink_to("usr/bin")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    os.chown(root / "etc" / "passwd", 1000, 1000)


def _make_venv(venv: Path) -> None:
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (venv / "bin" / "localmodel").write_text("#!/opt/localmodel/bin/python\n")
    (venv / "bin" / "localmodel").chmod(0o755)


def _members(archive: Path) -> dict[str, bytes | tarfile.TarInfo]:
    with tarfile.open(archive) as tar:
        result: dict[str, bytes | tarfile.TarInfo] = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isreg() else None
            result[member.name] = extracted.read() if extracted else member
        return result


def _blob(members: dict[str, bytes | tarfile.TarInfo], digest: str) -> bytes:
    algorithm, _, hex_digest = digest.partition(":")
    assert algorithm == "sha256"
    data = members[f"blobs/sha256/{hex_digest}"]
    assert isinstance(data, bytes)
    assert hashlib.sha256(data).hexdigest() == hex_digest, f"blob {digest} does not match its name"
    return data


@pytest.fixture()
def trees(tmp_path: Path) -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.fail("this test chowns a file to 1000:1000; run it as root")
    rootfs, venv = tmp_path / "rootfs", tmp_path / "venv"
    _make_rootfs(rootfs)
    _make_venv(venv)
    return rootfs, venv


@pytest.mark.parametrize("gzip_layers", [False, True])
def test_archive_reads_back_with_matching_digests(tmp_path: Path, trees: tuple[Path, Path],
                                                  gzip_layers: bool) -> None:
    rootfs, venv = trees
    written = write_image(tmp_path / "image.oci.tar", [Layer(rootfs), Layer(venv, "opt/localmodel")],
                          CONFIG, "localhost/localmodel:dev", EPOCH, gzip_layers=gzip_layers)
    members = _members(written.archive)

    assert json.loads(members["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(members["index.json"])
    [entry] = index["manifests"]
    assert entry["annotations"] == {ANNOTATION_REF_NAME: "dev", ANNOTATION_CONTAINERD_NAME: "localhost/localmodel:dev"}
    assert entry["mediaType"] == MEDIA_TYPE_MANIFEST
    assert entry["digest"] == written.manifest.digest

    manifest_bytes = _blob(members, entry["digest"])
    assert len(manifest_bytes) == entry["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_CONFIG
    config = json.loads(_blob(members, manifest["config"]["digest"]))
    assert written.image_id == manifest["config"]["digest"]
    assert config["architecture"] == "amd64" and config["os"] == "linux"
    assert config["config"] == {
        "Entrypoint": ["localmodel"], "Cmd": ["--help"],
        "Env": ["PATH=/opt/localmodel/bin:/usr/bin:/bin", "HOME=/tmp"],
        "User": "1000:1000", "WorkingDir": "/tmp",
        "Labels": {"org.opencontainers.image.title": "localmodel"},
    }

    layer_media_type = MEDIA_TYPE_LAYER_GZIP if gzip_layers else MEDIA_TYPE_LAYER
    layer_tars = []
    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert descriptor["mediaType"] == layer_media_type
        blob = _blob(members, descriptor["digest"])
        assert len(blob) == descriptor["size"]
        uncompressed = gzip.decompress(blob) if gzip_layers else blob
        assert "sha256:" + hashlib.sha256(uncompressed).hexdigest() == diff_id
        layer_tars.append(tarfile.open(fileobj=io.BytesIO(uncompressed)))

    base = {m.name: m for m in layer_tars[0].getmembers()}
    assert list(base) == sorted(base), "entries are not in name order"
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in base)
    assert base["usr/bin/python3"].issym() and base["usr/bin/python3"].linkname == "python3.11"
    assert base["bin"].issym() and base["bin"].linkname == "usr/bin"
    assert base["etc/passwd"].isreg() and (base["etc/passwd"].uid, base["etc/passwd"].gid) == (1000, 1000)
    assert base["etc/passwd"].uname == "" and base["etc/passwd"].gname == ""
    assert base["etc/passwd-"].islnk() and base["etc/passwd-"].linkname == "etc/passwd"
    assert base["tmp"].isdir() and base["tmp"].mode == 0o1777
    assert base["usr/bin/python3.11"].mode == 0o755
    assert {m.mtime for m in base.values()} == {EPOCH}, "files newer than the epoch are clamped to it"

    venv_layer = {m.name: m for m in layer_tars[1].getmembers()}
    assert list(venv_layer) == ["opt", "opt/localmodel", "opt/localmodel/bin",
                                "opt/localmodel/bin/localmodel", "opt/localmodel/bin/python"]
    assert venv_layer["opt"].isdir() and venv_layer["opt"].mode == 0o755
    assert venv_layer["opt/localmodel/bin/python"].linkname == "/usr/bin/python3"


def test_same_trees_give_the_same_archive(tmp_path: Path, trees: tuple[Path, Path]) -> None:
    rootfs, venv = trees
    layers = [Layer(rootfs), Layer(venv, "opt/localmodel")]
    first = write_image(tmp_path / "one.tar", layers, CONFIG, "localhost/localmodel:dev", EPOCH, gzip_layers=True)
    # Touching files (a rebuild of the same content) changes nothing: mtimes are clamped.
    later = time.time() + 100
    for path in [rootfs / "etc" / "passwd", venv / "bin" / "localmodel"]:
        os.utime(path, (later, later))
    second = write_image(tmp_path / "two.tar", layers, CONFIG, "localhost/localmodel:dev", EPOCH, gzip_layers=True)
    assert first.archive.read_bytes() == second.archive.read_bytes()
    assert first.manifest == second.manifest

    (venv / "bin" / "localmodel").write_text("#!/opt/localmodel/bin/python\n# changed\n")
    third = write_image(tmp_path / "three.tar", layers, CONFIG, "localhost/localmodel:dev", EPOCH)
    assert third.diff_ids[0] == first.diff_ids[0]
    assert third.diff_ids[1] != first.diff_ids[1]


def test_files_older_than_the_epoch_keep_their_mtime(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "module.py").write_text("x = 1\n")
    os.utime(tree / "module.py", (EPOCH - 3600, EPOCH - 3600))
    written = write_image(tmp_path / "image.tar", [Layer(tree)], CONFIG, "localhost/x:1", EPOCH)
    members = _members(written.archive)
    layer = tarfile.open(fileobj=io.BytesIO(_blob(members, written.layers[0].digest)))
    assert layer.getmember("module.py").mtime == EPOCH - 3600


def test_reference_tags() -> None:
    assert split_reference("localhost/localmodel:dev") == ("localhost/localmodel", "dev")
    assert split_reference("localhost:5000/localmodel") == ("localhost:5000/localmodel", "latest")
    assert split_reference("localmodel") == ("localmodel", "latest")
    with pytest.raises(ValueError, match="digest"):
        split_reference("localhost/localmodel@sha256:" + "0" * 64)


def test_absolute_layer_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    with pytest.raises(ValueError, match="relative"):
        write_image(tmp_path / "x.tar", [Layer(tmp_path / "tree", "../etc")], CONFIG, "localhost/x:1", EPOCH)
