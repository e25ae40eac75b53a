"""OCI image-layout archives from directories, without a container engine.

`write_image()` packs one or more layer directories into a tar archive in the OCI image layout
(https://github.com/opencontainers/image-spec/blob/main/image-layout.md): `oci-layout`,
`index.json`, and `blobs/sha256/<digest>` for every layer, the image config and the manifest.
containerd imports such an archive with

    ctr --address SOCKET -n k8s.io images import ARCHIVE

(`import_image()` runs exactly that), after which the kubelet finds the image under the reference
given here, with `imagePullPolicy: IfNotPresent` or `Never` since no registry is reachable.

The archive is deterministic: the same trees give the same bytes, hence the same digests.
- entries are sorted by name; the walk never follows a symbolic link;
- every modification time is clamped to `source_date_epoch` (as `tar --clamp-mtime`): files
  newer than it get it, older ones keep theirs. Clamping, not overwriting, keeps the compiled
  bytecode of packages valid: a timestamp-based .pyc records its source's mtime, which dpkg set
  from the package and which is older than any build;
- owners are the numeric uid/gid on disk, with no user or group names;
- hard links within a layer stay hard links, symbolic links stay links with their target as is;
- names are relative (`etc/passwd`), never absolute, never with `..`;
- gzip layers (optional) carry no file name and a zero timestamp.
Sockets are left out (a tar cannot hold them); device nodes are kept.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

#: The OCI annotation for an image's name in index.json; by convention only the tag.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
#: containerd's annotation for the full reference it stores the image under on import.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

_CHUNK = 1 << 20

#: Go's GOARCH names, which OCI uses, for the machine names `platform.machine()` returns.
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
           "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    """This machine's architecture in OCI's (Go's) naming: `amd64`, `arm64`, ..."""
    machine = platform.machine().lower()
    return _GOARCH.get(machine, machine)


@dataclass(frozen=True)
class Layer:
    """One layer: the tree under `directory`, placed at `path_in_image` (`""` is the root).

    With a `path_in_image` such as `opt/localmodel`, the layer also holds its parent directories
    (`opt/`) owned by root, mode 0755, so that the layer unpacks on an empty root too.
    """

    directory: Path
    path_in_image: str = ""


@dataclass(frozen=True)
class ImageConfig:
    """What the container runtime runs: the `config` object of the OCI image config."""

    entrypoint: Sequence[str] = ()
    cmd: Sequence[str] = ()
    env: Sequence[str] = ()
    user: str = ""
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    architecture: str = field(default_factory=host_architecture)
    os: str = "linux"

    def runtime_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if self.entrypoint:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            config["Cmd"] = list(self.cmd)
        if self.env:
            config["Env"] = list(self.env)
        if self.user:
            config["User"] = self.user
        if self.working_dir:
            config["WorkingDir"] = self.working_dir
        if self.labels:
            config["Labels"] = dict(sorted(self.labels.items()))
        return config


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and size."""

    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class WrittenImage:
    """The archive written by `write_image()` and the digests in it."""

    archive: Path
    reference: str
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    #: sha256 of each layer's uncompressed tar, as listed in the config's rootfs.diff_ids.
    diff_ids: tuple[str, ...]

    @property
    def image_id(self) -> str:
        """The image ID containerd and the kubelet show: the config's digest."""
        return self.config.digest


def split_reference(reference: str) -> tuple[str, str]:
    """`localhost/localmodel:dev` -> (`localhost/localmodel`, `dev`); a missing tag is `latest`.

    A digest reference (`name@sha256:...`) is refused: an image built here has no digest yet.
    """
    if "@" in reference:
        raise ValueError(f"image reference {reference!r} has a digest; give name:tag")
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag, or the colon was a registry port
        return reference, "latest"
    return name, tag


def write_image(
    archive: Path,
    layers: Sequence[Layer],
    config: ImageConfig,
    reference: str,
    source_date_epoch: int,
    gzip_layers: bool = False,
) -> WrittenImage:
    """Writes the OCI image-layout tar `archive` for `layers` (bottom first) and `config`.

    `reference` (e.g. `localhost/localmodel:dev`) is recorded in index.json, its tag as
    `org.opencontainers.image.ref.name` and the whole of it as `io.containerd.image.name`, the
    name containerd gives the imported image. The archive is written to a temporary name next
    to `archive` and renamed, so a reader never sees half an archive.
    """
    if not layers:
        raise ValueError("an image needs at least one layer")
    _, tag = split_reference(reference)
    archive.parent.mkdir(parents=True, exist_ok=True)
    blobs: dict[str, Path] = {}
    layer_descriptors: list[Descriptor] = []
    diff_ids: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".oci-", dir=archive.parent) as scratch:
        scratch_dir = Path(scratch)
        for number, layer in enumerate(layers):
            blob_path = scratch_dir / f"layer-{number}"
            descriptor, diff_id = _write_layer_blob(layer, blob_path, source_date_epoch, gzip_layers)
            blobs[descriptor.digest] = blob_path
            layer_descriptors.append(descriptor)
            diff_ids.append(diff_id)

        image_config = {
            "created": _rfc3339(source_date_epoch),
            "architecture": config.architecture,
            "os": config.os,
            "config": config.runtime_config(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": _rfc3339(source_date_epoch), "created_by": "localmodel.dev.oci"}
                        for _ in layers],
        }
        config_descriptor, config_bytes = _json_blob(MEDIA_TYPE_CONFIG, image_config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config_descriptor.as_json(),
            "layers": [d.as_json() for d in layer_descriptors],
        }
        manifest_descriptor, manifest_bytes = _json_blob(MEDIA_TYPE_MANIFEST, manifest)
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [{
                **manifest_descriptor.as_json(),
                "annotations": {ANNOTATION_CONTAINERD_NAME: reference, ANNOTATION_REF_NAME: tag},
                "platform": {"architecture": config.architecture, "os": config.os},
            }],
        }
        small_blobs = {config_descriptor.digest: config_bytes, manifest_descriptor.digest: manifest_bytes}

        partial = scratch_dir / "archive.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", _canonical_json({"imageLayoutVersion": "1.0.0"}), source_date_epoch)
            _add_bytes(tar, "index.json", _canonical_json(index), source_date_epoch)
            for directory in ("blobs", "blobs/sha256"):
                tar.addfile(_directory_info(directory, source_date_epoch))
            all_digests = sorted({*blobs, *small_blobs})
            for digest in all_digests:
                name = "blobs/sha256/" + digest.removeprefix("sha256:")
                if digest in small_blobs:
                    _add_bytes(tar, name, small_blobs[digest], source_date_epoch)
                else:
                    info = tarfile.TarInfo(name)
                    info.size = blobs[digest].stat().st_size
                    _normalize(info, source_date_epoch, mode=0o644)
                    with blobs[digest].open("rb") as blob:
                        tar.addfile(info, blob)
        os.replace(partial, archive)
    return WrittenImage(
        archive=archive,
        reference=reference,
        manifest=manifest_descriptor,
        config=config_descriptor,
        layers=tuple(layer_descriptors),
        diff_ids=tuple(diff_ids),
    )


def import_image(ctr_binary: Path | str, socket: Path | str, archive: Path | str,
                 namespace: str = "k8s.io", timeout: float = 600) -> str:
    """Imports `archive` into the containerd listening on `socket`, in `namespace` (`k8s.io` is
    the one the CRI plugin, hence the kubelet, uses). Runs
    `ctr --address SOCKET -n NAMESPACE images import ARCHIVE` and returns its output (the
    imported references). Raises `subprocess.CalledProcessError` with ctr's output on failure.

    The archive's `io.containerd.image.name` annotation is the name the image gets.
    """
    done = subprocess.run(
        [str(ctr_binary), "--address", str(socket), "-n", namespace, "images", "import", str(archive)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout


# --- layers -------------------------------------------------------------------------------------


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what goes through it into `target`."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:  # tarfile asks where it starts
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.target.write(view)
        self.size += len(view)
        return len(view)


def _write_layer_blob(layer: Layer, blob_path: Path, epoch: int, gzip_layer: bool) -> tuple[Descriptor, str]:
    """Writes the layer's tar (gzipped or not) to `blob_path`; returns its descriptor and its
    diff_id (the digest of the uncompressed tar)."""
    with blob_path.open("wb") as blob_file:
        blob_hasher = _HashingWriter(blob_file)
        if gzip_layer:
            # No name and mtime 0 in the gzip header: the same tar compresses to the same bytes.
            compressor = gzip.GzipFile(filename="", mode="wb", fileobj=blob_hasher, mtime=0, compresslevel=6)
            tar_hasher = _HashingWriter(compressor)
        else:
            compressor = None
            tar_hasher = blob_hasher
        with tarfile.open(fileobj=tar_hasher, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_tree(tar, layer, epoch)
        if compressor is not None:
            compressor.close()
    media_type = MEDIA_TYPE_LAYER_GZIP if gzip_layer else MEDIA_TYPE_LAYER
    descriptor = Descriptor(media_type, "sha256:" + blob_hasher.sha256.hexdigest(), blob_hasher.size)
    return descriptor, "sha256:" + tar_hasher.sha256.hexdigest()


def _add_tree(tar: tarfile.TarFile, layer: Layer, epoch: int) -> None:
    prefix = layer.path_in_image.strip("/")
    if prefix:
        _check_relative(prefix)
        parents = Path(prefix).parents
        for parent in reversed(parents[:-1]):  # `opt` for `opt/localmodel`, not `.`
            tar.addfile(_directory_info(parent.as_posix(), epoch))
    root = layer.directory
    if prefix:
        # The layer's top directory itself, with its owner and mode on disk.
        tar.addfile(_entry_info(tar, root, prefix, epoch))
    for path, name in _walk(root, prefix):
        info = _entry_info(tar, path, name, epoch)
        if info is None:
            continue
        if info.isreg():
            with path.open("rb") as content:
                tar.addfile(info, content)
        else:
            tar.addfile(info)


def _walk(root: Path, prefix: str) -> Iterator[tuple[Path, str]]:
    """Every entry under `root`, depth first in name order, with its name in the image. Symbolic
    links to directories are entries, not descended into."""
    with os.scandir(root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        name = f"{prefix}/{entry.name}" if prefix else entry.name
        path = Path(entry.path)
        yield path, name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(path, name)


def _entry_info(tar: tarfile.TarFile, path: Path, name: str, epoch: int) -> tarfile.TarInfo | None:
    _check_relative(name)
    # gettarinfo uses lstat, and remembers inodes: a second name of the same file becomes a
    # hard link to the first name written (the walk's order is fixed, so the choice is too).
    info = tar.gettarinfo(str(path), arcname=name)
    if info is None:  # a socket
        return None
    info.uname = ""
    info.gname = ""
    info.mtime = min(int(info.mtime), epoch)
    return info


def _check_relative(name: str) -> None:
    if name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"layer entry {name!r} is not a relative path inside the image")


# --- small blobs and entries ----------------------------------------------------------------------


def _canonical_json(document: Any) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _json_blob(media_type: str, document: Any) -> tuple[Descriptor, bytes]:
    data = _canonical_json(document)
    return Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), data


def _normalize(info: tarfile.TarInfo, epoch: int, mode: int) -> tarfile.TarInfo:
    info.mtime = epoch
    info.mode = mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _directory_info(name: str, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return _normalize(info, epoch, mode=0o755)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    _normalize(info, epoch, mode=0o644)
    tar.addfile(info, io.BytesIO(data))


def _rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
