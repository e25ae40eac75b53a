"""Path safety: which relative paths may be written below a destination folder. Pure, no I/O.

Object keys, Hugging Face paths and archive members come from outside. Before any of them
touches the filesystem it must be a plain relative POSIX path that stays below the folder:

- no absolute paths, no `..`, `.` or empty components, no trailing `/`;
- no NUL, newline or other control characters, no backslash (a Windows separator that
  some tools honour), no drive prefixes such as `C:`;
- each component at most 255 bytes in UTF-8 (the limit of every Linux filesystem), the whole
  path at most 1024 (it goes below a root and a staging folder, and Linux paths end at 4096);
- within one model, no two paths that differ only by case or Unicode normalization (they
  collide on case-insensitive filesystems and confuse readers everywhere), and no path that is
  both a file and a folder (`a` and `a/b`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from localmodel.errors import UnsafePathError

_MAX_COMPONENT_BYTES = 255
_MAX_PATH_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relative_path(path: str) -> str:
    """Return `path` unchanged if it is a safe relative POSIX path, else raise UnsafePathError."""
    shown = repr(path)[:200]
    if not path:
        raise UnsafePathError("empty path")
    if _CONTROL.search(path):
        raise UnsafePathError(f"control character in path {shown}")
    if "\\" in path:
        raise UnsafePathError(f"backslash in path {shown}")
    if path.startswith("/"):
        raise UnsafePathError(f"absolute path {shown}")
    if _DRIVE.match(path):
        raise UnsafePathError(f"drive-letter path {shown}")
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_PATH_BYTES:
        raise UnsafePathError(f"path longer than {_MAX_PATH_BYTES} bytes: {shown}")
    for component in path.split("/"):
        if component in ("", ".", ".."):
            raise UnsafePathError(f"path component {component!r} not allowed in {shown}")
        if len(component.encode("utf-8", "surrogateescape")) > _MAX_COMPONENT_BYTES:
            raise UnsafePathError(f"path component longer than 255 bytes in {shown}")
    return path


def _fold(path: str) -> str:
    """The collision key: case-folded, Unicode-normalized ("é" composed or not is one name
    on macOS and to most people)."""
    return unicodedata.normalize("NFC", path).casefold()


class TreeChecker:
    """Accepts paths one at a time and refuses any that collide with earlier ones."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}  # casefolded path -> original
        self._folders: dict[str, str] = {}  # casefolded folder -> original

    def add_file(self, path: str) -> None:
        check_relative_path(path)
        key = _fold(path)
        if key in self._files:
            raise UnsafePathError(f"paths collide: {self._files[key]!r} and {path!r}")
        if key in self._folders:
            raise UnsafePathError(f"{path!r} is both a file and a folder")
        self._add_parents(path)
        self._files[key] = path

    def add_folder(self, path: str) -> None:
        check_relative_path(path)
        key = _fold(path)
        if key in self._files:
            raise UnsafePathError(f"{path!r} is both a file and a folder")
        if key in self._folders and self._folders[key] != path:
            raise UnsafePathError(f"folders collide: {self._folders[key]!r} and {path!r}")
        self._add_parents(path)
        self._folders[key] = path

    def _add_parents(self, path: str) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            key = _fold(folder)
            if key in self._files:
                raise UnsafePathError(f"{self._files[key]!r} is both a file and a folder")
            known = self._folders.setdefault(key, folder)
            if known != folder:
                raise UnsafePathError(f"folders collide: {known!r} and {folder!r}")


def check_tree(paths: Iterable[str]) -> list[str]:
    """Check every path and that together they form a tree without collisions.

    Returns the paths in the given order. Raises UnsafePathError on the first problem.
    """
    checker = TreeChecker()
    checked: list[str] = []
    for path in paths:
        checker.add_file(path)
        checked.append(path)
    return checked
