"""The manifest: the proof that a model folder is complete, and the checks that use it.

Written as JSON beside the folder (see `layout`), after the folder is in place:

    {
      "format": 1,
      "source": "s3://bucket/model",          credentials and query values removed
      "revision": "5e3c...",                  resolved revision, when the source has one
      "files": [{"path": "config.json", "size": 612, "sha256": "...",
                 "digest": {"algorithm": "md5", "value": "..."}, "digest_checked": true,
                 "verified_with": "md5",              the algorithm compared with the source
                 "local_digest": null}],              what scrubs recompute, when not sha256
                                                      (a CRC, MD5 or ETag; BLAKE3 where the
                                                      source gives no digest)
      "archive": null,                        or the downloaded archive's entry, if unpacked
      "total_size": 612,
      "completed_at": "2026-01-01T00:00:00Z",
      "localmodel_version": "0.1.0",
      "details": {}
    }
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localmodel.fetch.hashing import file_digest
from localmodel.fetch.layout import HIDDEN, Layout
from localmodel.sources.base import Digest

logger = logging.getLogger(__name__)

FORMAT = 1


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    #: The file's sha256 when that is the digest it was hashed with (Hugging Face LFS, OCI, S3
    #: SHA-256 checksums, archives' members; plain HTTP before BLAKE3 became the local digest).
    #: None for downloads made without verification, and for files hashed with another digest
    #: (see `local`): one hash pass per byte.
    sha256: str | None
    #: The provider's digest, if it gave one.
    digest: Digest | None = None
    #: Whether that digest was compared with the downloaded bytes.
    digest_checked: bool = False
    #: The digest computed over the bytes when it is not a sha256 (a CRC64NVME, CRC32C, MD5 or
    #: S3 ETag, the provider's; BLAKE3 when the source gives none): what a scrub recomputes.
    local: Digest | None = None

    @property
    def scrub_digest(self) -> Digest | None:
        """What `verify_full` recomputes: the sha256, else the local digest; None when the
        file was downloaded without verification."""
        return Digest("sha256", self.sha256) if self.sha256 else self.local

    @property
    def verified_with(self) -> str | None:
        """The algorithm whose provider value the bytes were compared with, if any."""
        return self.digest.algorithm if self.digest_checked and self.digest is not None else None


@dataclass(frozen=True)
class Manifest:
    source: str
    revision: str | None
    files: tuple[ManifestFile, ...]
    total_size: int
    completed_at: str
    localmodel_version: str
    archive: ManifestFile | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> str:
        # Field by field rather than dataclasses.asdict, whose deep copies doubled the peak
        # memory of a manifest of 10^5 files.
        body = {
            "source": self.source, "revision": self.revision,
            "files": [_file_dict(item) for item in self.files],
            "total_size": self.total_size, "completed_at": self.completed_at,
            "localmodel_version": self.localmodel_version,
            "archive": _file_dict(self.archive) if self.archive is not None else None,
            "details": dict(self.details), "format": self.format,
        }
        return json.dumps(body, indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw: dict[str, Any] = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown manifest format {raw.get('format')!r}")

        def entry(item: Mapping[str, Any]) -> ManifestFile:
            digest = item.get("digest")
            local = item.get("local_digest")
            return ManifestFile(
                path=str(item["path"]), size=int(item["size"]),
                sha256=None if item.get("sha256") is None else str(item["sha256"]),
                digest=Digest(**digest) if digest else None,
                digest_checked=bool(item.get("digest_checked", False)),
                local=Digest(**local) if local else None,
            )

        return cls(
            source=str(raw["source"]),
            revision=raw.get("revision"),
            files=tuple(entry(item) for item in raw["files"]),
            total_size=int(raw["total_size"]),
            completed_at=str(raw["completed_at"]),
            localmodel_version=str(raw["localmodel_version"]),
            archive=entry(raw["archive"]) if raw.get("archive") else None,
            details=dict(raw.get("details") or {}),
        )


def _digest_dict(digest: Digest | None) -> dict[str, Any] | None:
    return None if digest is None else {"algorithm": digest.algorithm, "value": digest.value,
                                        "part_size": digest.part_size}


def _file_dict(item: ManifestFile) -> dict[str, Any]:
    body = {"path": item.path, "size": item.size, "sha256": item.sha256,
            "digest": _digest_dict(item.digest), "digest_checked": item.digest_checked,
            "verified_with": item.verified_with}
    if item.local is not None:  # only then: manifests of sha256 files stay as they were
        body["local_digest"] = _digest_dict(item.local)
    return body


def write_manifest(layout: Layout, manifest: Manifest) -> None:
    """Write atomically and durably: temp file, fsync, rename, fsync the folder."""
    layout.manifest.parent.mkdir(parents=True, exist_ok=True)
    temporary = layout.manifest.with_name(f".{layout.manifest.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(manifest.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, layout.manifest)
    fsync_dir(layout.manifest.parent)


def remove_manifest(layout: Layout) -> None:
    """Withdraw the proof first whenever a folder is about to change."""
    try:
        os.unlink(layout.manifest)
    except FileNotFoundError:
        return
    fsync_dir(layout.manifest.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(layout: Layout) -> Manifest | None:
    """The manifest of `layout`, or None if there is none or it is unreadable (= incomplete)."""
    try:
        text = layout.manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("unreadable manifest %s: %s", layout.manifest, exc)
        return None


def _walk_files(root: Path, skip_hidden_root: bool) -> Iterable[str]:
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in os.scandir(folder):
            if skip_hidden_root and folder == root and entry.name == HIDDEN:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                stack.append(path)
            else:
                yield path.relative_to(root).as_posix()


def verify_quick(layout: Layout, manifest: Manifest, *,
                 linked: list[tuple[int, int, int]] | None = None) -> list[str]:
    """Problems found by comparing names, types and sizes with the manifest (no reading).
    `linked`, when given, receives (st_dev, st_ino, size) for every path whose file has more
    than one link (shared through the content store, or twice in the model), from the same
    lstat."""
    problems: list[str] = []
    if not layout.dest.is_dir():
        return [f"folder {layout.dest} is missing"]
    expected = {item.path: item for item in manifest.files}
    for item in manifest.files:
        try:
            st = os.lstat(layout.dest / item.path)
        except FileNotFoundError:
            problems.append(f"missing: {item.path}")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"not a regular file: {item.path}")
        elif st.st_size != item.size:
            problems.append(f"size: {item.path} has {st.st_size} bytes, manifest says {item.size}")
        elif linked is not None and st.st_nlink > 1:
            linked.append((st.st_dev, st.st_ino, st.st_size))
    for path in _walk_files(layout.dest, skip_hidden_root=layout.in_place):
        if path not in expected:
            problems.append(f"unexpected: {path}")
    return problems


def verify_full(layout: Layout, manifest: Manifest, *, mismatched: list[str] | None = None) -> list[str]:
    """`verify_quick`, then re-hash every file and compare with the manifest (a scrub), with
    the digest each was hashed with when it was downloaded (`ManifestFile.scrub_digest`).
    Files downloaded without verification are reported as unverifiable. `mismatched`, when
    given, receives the paths whose bytes no longer match their digest."""
    problems = verify_quick(layout, manifest)
    for item in manifest.files:
        path = layout.dest / item.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != item.size:
            continue  # already reported
        expected = item.scrub_digest
        if expected is None:
            problems.append(f"unverifiable: {item.path} was downloaded without verification")
            continue
        actual = file_digest(path, expected)  # sha256 in manifests written before BLAKE3
        if actual != expected.value:
            problems.append(f"{expected.algorithm}: {item.path} is {actual}, manifest says {expected.value}")
            if mismatched is not None:
                mismatched.append(item.path)
    return problems
