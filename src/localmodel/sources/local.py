"""Local files: `file://` URIs, plain paths and `pvc://claim/path`.

`pvc://claim/path` reads `<LOCALMODEL_PVC_ROOT>/path`, as KServe's storage initializer reads
`/mnt/pvc/path` with the claim mounted at /mnt/pvc (default root `/mnt/pvc`). A root holding
`{claim}` (e.g. `/var/lib/localmodel/pvcs/{claim}`) serves several claims side by side.

A folder is listed recursively. Symlinks are followed only while their target stays inside the
source folder; a link that escapes it is refused, so a model cannot smuggle in host files
(`LOCALMODEL_FILE_SYMLINKS=follow` lifts this, e.g. for a Hugging Face cache snapshot whose
files link to `../../blobs`). Devices, FIFOs and sockets are refused.

Reads use `os.preadv` into a reused buffer: no per-chunk allocation, and the kernel copies
straight from the page cache.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from localmodel.errors import (
    IntegrityError,
    InvalidURIError,
    PermanentError,
    SourceAuthError,
    SourceNotFoundError,
    SourceUnavailableError,
    UnsafePathError,
)
from localmodel.sources.base import Listing, ListingLimit, RemoteFile, Settings

PVC_ROOT_SETTING = "LOCALMODEL_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
SYMLINKS_SETTING = "LOCALMODEL_FILE_SYMLINKS"
_READ_SIZE = 512 * 1024
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def resolve_local_path(uri: str, settings: Settings) -> Path:
    """The filesystem path a file://, pvc:// or plain-path URI names."""
    if uri.startswith("file://"):
        # KServe strips the prefix, so file://relative/path stays relative.
        raw = uri[len("file://"):]
        if not raw:
            raise InvalidURIError("file:// URI without a path")
        return Path(raw)
    if uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://"):].partition("/")
        if not _CLAIM_NAME.match(claim):
            raise InvalidURIError(f"pvc URI {uri!r} needs a valid claim name: pvc://claim/path")
        root = Path((settings.get(PVC_ROOT_SETTING) or DEFAULT_PVC_ROOT).replace("{claim}", claim))
        target = Path(os.path.normpath(root / sub)) if sub else root
        if target != root and root not in target.parents:
            raise InvalidURIError(f"pvc URI {uri!r} points outside its volume")
        return target
    return Path(uri)


def _translate(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return SourceNotFoundError(f"{what} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SourceAuthError(f"permission denied reading {what}")
    if exc.errno in (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR):
        return SourceUnavailableError(f"I/O error reading {what}: {exc.strerror}")
    return PermanentError(f"cannot read {what}: {exc.strerror}")


def _version(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_size}"


class LocalSource:
    """A file or folder on a locally mounted filesystem."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self.root = resolve_local_path(uri, settings)
        self.follow_symlinks = settings.get(SYMLINKS_SETTING, "").lower() == "follow"
        self._files: dict[str, tuple[Path, str]] = {}
        self._limit = ListingLimit(settings, f"local path {str(self.root)!r}")

    # -- listing ---------------------------------------------------------------------------

    def list_files(self) -> Listing:
        try:
            st = self.root.stat()
        except OSError as exc:
            raise _translate(exc, f"local path {str(self.root)!r}") from exc
        files: list[RemoteFile] = []
        if stat.S_ISREG(st.st_mode):
            files.append(self._remember(self.root.name, self.root, st))
        elif stat.S_ISDIR(st.st_mode):
            for found in self._walk():
                files.append(found)
                self._limit.check(len(files))
        else:
            raise UnsafePathError(f"{str(self.root)!r} is neither a file nor a folder")
        return Listing(files=tuple(files))

    def _walk(self) -> Iterator[RemoteFile]:
        real_root = os.path.realpath(self.root)
        stack = [self.root]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError as exc:
                raise _translate(exc, f"folder {str(folder)!r}") from exc
            for entry in entries:
                path = Path(entry.path)
                relative = path.relative_to(self.root).as_posix()
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not self.follow_symlinks and os.path.commonpath([real_root, target]) != real_root:
                        raise UnsafePathError(f"symlink {relative!r} points outside the source folder")
                try:
                    st = path.stat()
                except OSError as exc:
                    raise _translate(exc, f"{relative!r}") from exc
                if stat.S_ISDIR(st.st_mode):
                    if entry.is_symlink():
                        # A linked folder inside the tree would list its files twice.
                        raise UnsafePathError(f"symlink to a folder {relative!r} is not supported")
                    stack.append(path)
                elif stat.S_ISREG(st.st_mode):
                    yield self._remember(relative, path, st)
                else:
                    raise UnsafePathError(f"{relative!r} is not a regular file")

    def _remember(self, relative: str, path: Path, st: os.stat_result) -> RemoteFile:
        version = _version(st)
        self._files[relative] = (path, version)
        return RemoteFile(path=relative, size=st.st_size, version=version)

    # -- reading ---------------------------------------------------------------------------

    def read_range(self, path: str, offset: int, length: int) -> Iterator[memoryview]:
        try:
            real_path, version = self._files[path]
        except KeyError:
            raise SourceNotFoundError(f"{path!r} was not listed by this source") from None
        try:
            fd = os.open(real_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise _translate(exc, repr(path)) from exc
        try:
            if _version(os.fstat(fd)) != version:
                raise IntegrityError(f"{path!r} changed while it was being copied")
            buffer = bytearray(min(_READ_SIZE, max(length, 1)))
            view = memoryview(buffer)
            position, end = offset, offset + length
            while position < end:
                try:
                    count = os.preadv(fd, [view[: min(len(view), end - position)]], position)
                except OSError as exc:
                    raise _translate(exc, repr(path)) from exc
                if count == 0:
                    raise IntegrityError(f"{path!r} is shorter than listed (it changed)")
                yield view[:count]
                position += count
        finally:
            os.close(fd)

    def close(self) -> None:
        self._files.clear()
