"""Assembling a model from verified OCI layers (`Listing.layers`), safely.

The engine fetches every blob of an OCI artifact into staging like any other file: ranged,
parallel, resumable, and checked against the sha256 its descriptor names. Only then does this
module build the model folder from them, layer by layer, in manifest order:

- a "file" layer (a ModelPack raw layer) is hard-linked into place (a copy where links fail):
  no byte is written twice;
- a "tar" layer (a modelcar image layer, a ModelPack tar layer) is streamed through `tarfile`
  (gzip too) and its members written below the layer's folder, hashed as they are written.
  A modelcar keeps only the `models/` subtree of its image; OCI whiteouts (`.wh.NAME`,
  `.wh..wh..opq`) remove what earlier layers wrote, and later layers replace earlier files.

Every member name of every layer is checked (`paths.check_relative_path`) even outside the
subtree kept: absolute names, `..`, a whiteout that climbs (`.wh..`), control characters are
an UnsafePathError, as are symbolic links, hard links to anything not already written below the
subtree, device files and FIFOs inside it. Nothing is ever created through a link: folders are
made by `staging.make_parents`, which refuses anything that is not a real folder. The total
written is bounded by `max_ratio` times the blobs' size and by the free space (bombs).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO

from localmodel.errors import IntegrityError, PermanentError, UnsafePathError
from localmodel.fetch.archive import UnpackedFile, _Budget, _copy
from localmodel.fetch.paths import check_relative_path, check_tree
from localmodel.fetch.staging import make_parents
from localmodel.sources.base import Layer

_OPAQUE = ".wh..wh..opq"
_WHITEOUT = ".wh."


def _member_name(raw: str) -> str:
    name = raw
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _under(path: str, folder: str) -> bool:
    return not folder or path == folder or path.startswith(folder + "/")


class _Tree:
    """The model folder being assembled: what is on disk below `root`, file by file."""

    def __init__(self, root: Path, budget: _Budget) -> None:
        self.root = root
        self.budget = budget
        self.files: dict[str, UnpackedFile] = {}
        self.folders: set[str] = set()

    def remove(self, path: str) -> None:
        """Remove a file or a folder (with everything below it) that earlier layers wrote."""
        target = self.root / path if path else self.root
        if path in self.files:
            os.unlink(target)
            del self.files[path]
            return
        for name in [name for name in self.files if _under(name, path)]:
            del self.files[name]
        self.folders = {name for name in self.folders if not _under(name, path)}
        if path:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for entry in os.scandir(self.root):
                (shutil.rmtree if entry.is_dir(follow_symlinks=False) else os.unlink)(entry.path)

    def clear_below(self, folder: str, keep: set[str]) -> None:
        """An opaque whiteout: empty `folder` of what earlier layers wrote (not this one)."""
        prefix = folder + "/" if folder else ""
        doomed = [name for name in self.files if name.startswith(prefix) and name not in keep]
        for name in doomed:
            os.unlink(self.root / name)
            del self.files[name]

    def make_room(self, path: str, replace: bool) -> Path:
        """The target for a new file at `path`: an earlier file (or folder) there is removed
        when layers may replace each other, else it is an UnsafePathError."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in self.files:
                if not replace:
                    raise UnsafePathError(f"{parent!r} is both a file and a folder")
                self.remove(parent)
        if path in self.files or path in self.folders:
            if not replace:
                raise UnsafePathError(f"two layers write {path!r}")
            self.remove(path)
        target = make_parents(self.root, path, self.folders)
        return target


def assemble(layers: Iterable[Layer], blob_path: Callable[[str], Path],
             blob_hash: Mapping[str, tuple[int, str | None]], into: Path, *, max_ratio: float,
             free_bytes: int) -> list[UnpackedFile]:
    """Build the model in the empty folder `into` from `layers`; return its files.

    `blob_path(blob)` is where a verified blob lies, `blob_hash[blob]` its (size, sha256).
    """
    layers = list(layers)
    blob_total = sum(blob_hash[blob][0] for blob in {layer.blob for layer in layers})
    tree = _Tree(into, _Budget(limit=int(max(blob_total, 1) * max_ratio), free=free_bytes))
    for layer in layers:
        if layer.kind == "file":
            _place_file(tree, layer, blob_path(layer.blob), blob_hash[layer.blob])
        elif layer.kind == "tar":
            _apply_tar(tree, layer, blob_path(layer.blob))
        else:
            raise PermanentError(f"unknown layer kind {layer.kind!r}")
    files = sorted(tree.files.values(), key=lambda item: item.path)
    check_tree(item.path for item in files)
    return files


def _place_file(tree: _Tree, layer: Layer, blob: Path, hashed: tuple[int, str | None]) -> None:
    path = check_relative_path(layer.path)
    target = tree.make_room(path, replace=False)
    size, sha256 = hashed
    try:
        os.link(blob, target, follow_symlinks=False)
    except OSError:
        shutil.copyfile(blob, target, follow_symlinks=False)
    tree.files[path] = UnpackedFile(path, size, sha256 or "")


def _open_tar(blob: Path, compression: str) -> tuple[IO[bytes], tarfile.TarFile]:
    handle: IO[bytes] = open(blob, "rb")  # noqa: SIM115 - closed by the caller
    try:
        if compression == "gzip":
            return handle, tarfile.open(fileobj=handle, mode="r|gz")
        if compression == "":
            return handle, tarfile.open(fileobj=handle, mode="r|")
        if compression == "zstd":
            try:
                import zstandard  # type: ignore[import-not-found]
            except ImportError:
                raise PermanentError(
                    "a zstd-compressed layer needs the zstandard package (pip install zstandard)"
                ) from None
            reader = zstandard.ZstdDecompressor().stream_reader(handle)
            return handle, tarfile.open(fileobj=reader, mode="r|")
        raise PermanentError(f"unknown layer compression {compression!r}")
    except BaseException:
        handle.close()
        raise


def _apply_tar(tree: _Tree, layer: Layer, blob: Path) -> None:
    into = check_relative_path(layer.path) if layer.path else ""
    subtree = layer.subtree.strip("/")

    def placed(name: str) -> str | None:
        """Where a member named `name` (checked) goes in the model, None outside the subtree."""
        if subtree:
            if not name.startswith(subtree + "/"):
                return None
            name = name[len(subtree) + 1:]
        if not into or _under(name, into):
            # A ModelPack tar layer names its members with the annotated path itself (modctl,
            # `oras push DIR`) or relative to it: either way they land at or below that path.
            return name
        return f"{into}/{name}"

    written: set[str] = set()
    handle, tar = _open_tar(blob, layer.compression)
    try:
        with handle, tar:
            for member in tar:
                raw = member.name
                if raw.startswith("/"):
                    raise UnsafePathError(f"layer member {raw[:200]!r} is an absolute path")
                name = _member_name(raw)
                if not name or name == ".":
                    continue
                check_relative_path(name)
                folder, _, base = name.rpartition("/")
                if layer.whiteouts and base.startswith(_WHITEOUT):
                    _whiteout(tree, layer, subtree, into, folder, base, written)
                    continue
                if subtree and name == subtree or subtree.startswith(name + "/"):
                    if not member.isdir():  # the subtree itself must be a real folder
                        raise UnsafePathError(f"layer member {name!r} is not a folder")
                    continue
                target_name = placed(name)
                if target_name is None:
                    continue  # the rest of the image: only its names are checked
                if member.isdir():
                    if target_name in tree.files and layer.whiteouts:
                        tree.remove(target_name)
                    make_parents(tree.root, target_name + "/x", tree.folders)
                    continue
                if member.issym():
                    raise UnsafePathError(f"layer member {name!r} is a symbolic link")
                if member.islnk():
                    _hard_link(tree, layer, member, placed, target_name, written)
                    continue
                if not member.isreg():
                    raise UnsafePathError(f"layer member {name!r} is a device, FIFO or other special file")
                target = tree.make_room(target_name, replace=layer.whiteouts)
                stream = tar.extractfile(member)
                assert stream is not None
                result = _copy(stream, target, tree.budget, member.size)
                if result.size != member.size:
                    raise IntegrityError(f"layer member {name!r} is truncated")
                tree.files[target_name] = UnpackedFile(target_name, result.size, result.sha256)
                written.add(target_name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise IntegrityError(f"layer {layer.blob} is not a readable tar: {exc}") from exc


def _hard_link(tree: _Tree, layer: Layer, member: tarfile.TarInfo,
               placed: Callable[[str], str | None], target_name: str, written: set[str]) -> None:
    """A hard link is kept only when it names a file this model already holds: then it is a
    second copy of that file's bytes (a link of its own). Anything else climbs out of the tree."""
    link = member.linkname
    if link.startswith("/"):
        raise UnsafePathError(f"layer member {member.name!r} links to an absolute path")
    link_name = _member_name(link)
    check_relative_path(link_name)
    source = placed(link_name)
    if source is None or source not in tree.files:
        raise UnsafePathError(f"layer member {member.name!r} links outside the model ({link[:200]!r})")
    original = tree.files[source]
    target = tree.make_room(target_name, replace=layer.whiteouts)
    os.link(tree.root / source, target, follow_symlinks=False)
    tree.budget.spend(original.size)
    tree.files[target_name] = UnpackedFile(target_name, original.size, original.sha256)
    written.add(target_name)


def _whiteout(tree: _Tree, layer: Layer, subtree: str, into: str, folder: str, base: str,
              written: set[str]) -> None:
    """Apply one whiteout entry. Its target is checked like any name, so `.wh..` (which would
    remove the parent of a folder) is an UnsafePathError."""
    if base == _OPAQUE:
        target = folder
    else:
        hidden = base[len(_WHITEOUT):]
        target = f"{folder}/{hidden}" if folder else hidden
        check_relative_path(target)
    if subtree:
        if _under(target, subtree):
            relative = target[len(subtree) + 1:] if target != subtree else ""
        elif _under(subtree, target):
            relative = ""  # an ancestor of the subtree: all of it goes
        else:
            return  # outside the subtree kept
    else:
        relative = target
    path = f"{into}/{relative}" if into and relative else (into or relative)
    if base == _OPAQUE:
        tree.clear_below(path, written)
    else:
        tree.remove(path)
