"""Unpacking a downloaded zip or tar archive into the staging folder, safely.

Like KServe, a model that is a single `.zip`, `.tar`, `.tar.gz`/`.tgz`, `.tar.bz2` or
`.tar.xz` file is unpacked and the archive dropped. Unlike `extractall`, every member is
checked first (see `paths`): absolute or `..` names, links of any kind, devices and FIFOs,
duplicate or colliding names are refused, and nothing is written outside the target folder.
Bombs are bounded: the unpacked total may not exceed `max_ratio` times the archive size nor
the free space, and a zip member may not yield more bytes than it declares (zipfile stops
at the declared size and checks the CRC). Each file is hashed while it is written.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from localmodel.errors import (
    InsufficientSpaceError,
    IntegrityError,
    LocalModelError,
    UnsafePathError,
)
from localmodel.fetch.paths import TreeChecker
from localmodel.fetch.staging import create_file, is_no_space, make_parents

WRITE_SIZE = 512 * 1024

_SUFFIXES = (
    (".tar.gz", "tar"), (".tgz", "tar"), (".tar.bz2", "tar"), (".tbz2", "tar"),
    (".tar.xz", "tar"), (".txz", "tar"), (".tar", "tar"), (".zip", "zip"),
)


def archive_kind(name: str) -> str | None:
    """"zip" or "tar" (any compression) for an archive file name, else None."""
    lowered = name.lower()
    for suffix, kind in _SUFFIXES:
        if lowered.endswith(suffix):
            return kind
    return None


@dataclass(frozen=True)
class UnpackedFile:
    path: str
    size: int
    sha256: str


def _member_name(raw: str) -> str:
    """Archive names often start with "./"; the rest is checked as a relative path."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if raw.endswith("/") else name


class _Budget:
    def __init__(self, limit: int, free: int) -> None:
        self.limit, self.free, self.used = limit, free, 0

    def spend(self, amount: int) -> None:
        self.used += amount
        if self.used > self.free:
            raise InsufficientSpaceError("not enough free space to unpack the archive")
        if self.used > self.limit:
            raise UnsafePathError("archive expands far beyond its size (possible archive bomb)")


def _copy(stream: IO[bytes], target: Path, budget: _Budget, declared: int | None) -> UnpackedFile:
    digest = hashlib.sha256()
    fd = create_file(target, 0)
    size = 0
    buffer = memoryview(bytearray(WRITE_SIZE))
    try:
        while True:
            count = stream.readinto(buffer)  # type: ignore[attr-defined]
            if not count:
                break
            size += count
            if declared is not None and size > declared:
                raise UnsafePathError(f"{target.name!r} is larger than the archive declares")
            budget.spend(count)
            piece = buffer[:count]
            digest.update(piece)
            written = 0
            while written < count:
                written += os.write(fd, piece[written:])
    except OSError as exc:
        if is_no_space(exc):
            raise InsufficientSpaceError("no space left while unpacking the archive") from exc
        raise
    finally:
        os.close(fd)
    return UnpackedFile(path="", size=size, sha256=digest.hexdigest())


def _unpack_tar(archive: Path, into: Path, budget: _Budget) -> Iterator[UnpackedFile]:
    checker, folders = TreeChecker(), set[str]()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            name = _member_name(member.name)
            if not name or name == ".":
                continue
            if member.isdir():
                checker.add_folder(name)
                make_parents(into, name + "/x", folders)
                continue
            if not member.isreg():
                raise UnsafePathError(f"archive member {name!r} is a link or special file")
            checker.add_file(name)
            stream = tar.extractfile(member)
            assert stream is not None
            with stream:
                result = _copy(stream, make_parents(into, name, folders), budget, member.size)
            if result.size != member.size:
                raise IntegrityError(f"archive member {name!r} is truncated")
            yield UnpackedFile(name, result.size, result.sha256)


def _unpack_zip(archive: Path, into: Path, budget: _Budget) -> Iterator[UnpackedFile]:
    checker, folders = TreeChecker(), set[str]()
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        declared = sum(info.file_size for info in infos)
        if declared > budget.limit:
            raise UnsafePathError("archive declares far more data than its size (possible bomb)")
        if declared > budget.free:
            raise InsufficientSpaceError("not enough free space to unpack the archive")
        for info in infos:
            name = _member_name(info.filename)
            if not name or name == ".":
                continue
            mode = info.external_attr >> 16
            if info.is_dir():
                checker.add_folder(name)
                make_parents(into, name + "/x", folders)
                continue
            # Type bits are often absent (0): that is a plain file. Any other type is refused.
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                raise UnsafePathError(f"archive member {name!r} is a link or special file")
            if info.flag_bits & 0x1:
                raise UnsafePathError(f"archive member {name!r} is encrypted")
            checker.add_file(name)
            with bundle.open(info) as stream:
                result = _copy(stream, make_parents(into, name, folders), budget, info.file_size)
            yield UnpackedFile(name, result.size, result.sha256)


def unpack(archive: Path, kind: str, into: Path, *, max_ratio: float, free_bytes: int,
           on_file: Callable[[UnpackedFile], None] | None = None) -> list[UnpackedFile]:
    """Unpack `archive` into the existing folder `into`; return the files it held."""
    budget = _Budget(limit=int(max(archive.stat().st_size, 1) * max_ratio), free=free_bytes)
    members = _unpack_zip if kind == "zip" else _unpack_tar
    files: list[UnpackedFile] = []
    try:
        for item in members(archive, into, budget):
            files.append(item)
            if on_file is not None:
                on_file(item)
    except LocalModelError:
        raise
    except OSError as exc:
        if is_no_space(exc):
            raise InsufficientSpaceError("no space left while unpacking the archive") from exc
        if exc.errno is not None:
            raise
        # gzip and bz2 report a corrupt stream as an OSError without errno.
        raise IntegrityError(f"archive {archive.name!r} is corrupt: {exc}") from exc
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise IntegrityError(f"archive {archive.name!r} is corrupt: {exc}") from exc
    return files
