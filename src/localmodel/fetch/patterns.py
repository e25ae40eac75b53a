"""Which listed files to fetch: KServe's STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS.

Same semantics as huggingface_hub's `filter_repo_objects`, which KServe passes them to:
comma-separated fnmatch globs; with allow patterns, keep a path that matches at least one;
then drop a path that matches any ignore pattern; a pattern ending in `/` means everything
below that folder. Matching is case-sensitive, as on the object stores. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase


def parse_patterns(value: str | None) -> tuple[str, ...]:
    """Split a comma-separated setting into patterns; blanks are dropped."""
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _normalize(pattern: str) -> str:
    return pattern + "*" if pattern.endswith("/") else pattern


def is_selected(path: str, allow: Sequence[str] = (), ignore: Sequence[str] = ()) -> bool:
    """Whether `path` passes the allow and ignore patterns."""
    if allow and not any(fnmatchcase(path, _normalize(p)) for p in allow):
        return False
    return not any(fnmatchcase(path, _normalize(p)) for p in ignore)


def select(paths: Iterable[str], allow: Sequence[str] = (), ignore: Sequence[str] = ()) -> list[str]:
    """The paths that pass the patterns, in their original order."""
    return [path for path in paths if is_selected(path, allow, ignore)]
