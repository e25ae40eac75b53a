"""The product image built from Debian packages (`localmodel dev image`), without a container
engine: its archive names the reference containerd imports it under, its config is what the
runtime runs (checked by running it that way in the unpacked root filesystem), it is small,
the same commit builds to the same digest, and it serves the consumer Pods of the tests.
The venv's contents and the commands are checked by test_wheel.py, for this image too."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from localmodel.dev.image import DEFAULT_REFERENCE, IMAGE_CONFIG, build_image
from localmodel.dev.oci import ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, WrittenImage
from tests.packaging.sandbox import run_as_pod


def _read(image: WrittenImage, name: str) -> bytes:
    with tarfile.open(image.archive) as archive:
        member = archive.extractfile(name)
        assert member is not None
        return member.read()


def _config(image: WrittenImage) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(_read(image, "blobs/sha256/" + image.config.digest.removeprefix("sha256:")))
    return config


def _environment(config: dict[str, Any]) -> dict[str, str]:
    return dict(entry.split("=", 1) for entry in config["config"]["Env"])


def test_archive_is_named_for_containerd(product_image: WrittenImage) -> None:
    [entry] = json.loads(_read(product_image, "index.json"))["manifests"]
    assert entry["annotations"][ANNOTATION_CONTAINERD_NAME] == DEFAULT_REFERENCE == "localhost/localmodel:dev"
    assert entry["annotations"][ANNOTATION_REF_NAME] == "dev"
    assert entry["digest"] == product_image.manifest.digest
    assert product_image.archive.name == "localmodel-0.1.0.oci.tar"


def test_entrypoint_runs_as_the_config_says(product_image: WrittenImage, image_rootfs: Path) -> None:
    """As the runtime does: the config's user, environment, working directory and entrypoint."""
    config = _config(product_image)["config"]
    assert config == IMAGE_CONFIG.runtime_config()
    assert config["User"] == "1000:1000"
    environment = _environment(_config(product_image))
    path = [Path(p) for p in environment.pop("PATH").split(":")]
    done = run_as_pod([*config["Entrypoint"], "version"], path=path, env=environment, root=image_rootfs)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.1.0"
    shown = run_as_pod([*config["Entrypoint"], *config["Cmd"]], path=path, env=environment, root=image_rootfs)
    assert shown.returncode == 0 and "Usage: localmodel" in shown.stdout


def test_root_filesystem_is_minimal(image_rootfs: Path) -> None:
    usr_share = image_rootfs / "usr" / "share"
    docs = [p for p in (usr_share / "doc").rglob("*") if p.is_file()]
    assert docs and all(p.name == "copyright" for p in docs), "only the licences stay"
    for folder in ("man", "info", "locale"):
        assert not any(p.is_file() for p in (usr_share / folder).rglob("*")), folder
    assert not any((image_rootfs / "var" / "lib" / "apt" / "lists").glob("*"))
    assert not any((image_rootfs / "dev").iterdir()), "the runtime provides /dev"
    assert not (image_rootfs / "usr" / "bin" / "apt-get").exists()
    python = (image_rootfs / "opt" / "localmodel" / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in python and "version = 3.11." in python


def test_same_commit_builds_the_same_image(product_image: WrittenImage, tmp_path: Path) -> None:
    again = build_image(output_dir=tmp_path)
    assert again.manifest == product_image.manifest
    assert again.archive.read_bytes() == product_image.archive.read_bytes()


def test_consumer_pods_read_and_hash_files_with_python3(image_rootfs: Path) -> None:
    """The tests' consumer Pods run the same image with python3 as their command."""
    script = ("import hashlib, pathlib, sys\n"
              "for path in sorted(pathlib.Path(sys.argv[1]).rglob('*')):\n"
              "    print(hashlib.sha256(path.read_bytes()).hexdigest(), path.name)\n")
    done = run_as_pod(["python3", "-c", script, "/usr/share/doc/python3"], path=[Path("/usr/bin")], root=image_rootfs)
    assert done.returncode == 0, done.stderr
    expected = hashlib.sha256((image_rootfs / "usr/share/doc/python3/copyright").read_bytes()).hexdigest()
    assert done.stdout.splitlines() == [f"{expected} copyright"]


def test_every_native_module_finds_its_libraries(image_rootfs: Path) -> None:
    """A C extension whose shared library is missing is skipped for a pure-Python fallback with
    only a warning (google-crc32c and frozenlist need libstdc++, which Debian's Essential set
    lacks; found in the agent's log on real nodes)."""
    missing = []
    for path in sorted((image_rootfs / "opt" / "localmodel").rglob("*.so*")):
        if path.is_file() and not path.is_symlink():
            inside = "/" + path.relative_to(image_rootfs).as_posix()
            done = subprocess.run(["chroot", str(image_rootfs), "/usr/bin/ldd", inside],
                                  capture_output=True, text=True, timeout=60, check=False)
            missing += [f"{inside}: {line.strip()}" for line in done.stdout.splitlines() if "not found" in line]
    assert missing == []
    implementation = subprocess.run(
        ["chroot", str(image_rootfs), "/opt/localmodel/bin/python", "-W", "error", "-c",
         "import google_crc32c; print(google_crc32c.implementation)"],
        capture_output=True, text=True, timeout=60, check=False)
    assert implementation.stdout.strip() == "c", implementation.stderr
    # BLAKE3 (the local digest of files whose source names none) has no fallback at all: the
    # agent could not hash an HTTP model without it. The empty input's official test vector.
    empty = subprocess.run(
        ["chroot", str(image_rootfs), "/opt/localmodel/bin/python", "-W", "error", "-c",
         "import blake3; print(blake3.blake3(b'').hexdigest())"],
        capture_output=True, text=True, timeout=60, check=False)
    assert empty.stdout.strip() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262", empty.stderr
    # sha256 chaining values (peer fill's one pass) drive the image's own libcrypto through
    # ctypes: the structure it expects must be the one there (the module checks itself at import).
    chained = subprocess.run(
        ["chroot", str(image_rootfs), "/opt/localmodel/bin/python", "-W", "error", "-c",
         "from localmodel.fetch import chaining; h = chaining.Sha256(chaining.advance(chaining.START, b'a' * 64)); "
         "h.update(b'bc'); print(h.hexdigest())"],
        capture_output=True, text=True, timeout=60, check=False)
    assert chained.stdout.strip() == hashlib.sha256(b"a" * 64 + b"bc").hexdigest(), chained.stderr
