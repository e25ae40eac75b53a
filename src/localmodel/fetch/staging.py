"""The staging area of one download: what is being fetched and which bytes are already on disk.

    <staging>/
    ├── plan.json       the listing being fetched, and the boot it started in (atomic write)
    ├── journal.jsonl   append-only: {"f": i, "s": start, "e": end} for each range written,
    │                   {"f": i, "sha256": hex, "checked": bool, "local": digest} for each
    │                   verified file ("local": its digest when that is not a sha256),
    │                   {"f": i, "reset": true} when file i is started again from nothing
    ├── data/           the model's files being filled; renamed into place at publish
    ├── archive/        a downloaded archive, before it is unpacked into data/
    ├── manifest.json   the manifest about to be published (written just before data/ moves)
    └── old/            a previous copy moved aside during publish, then deleted

A rerun with the same plan trusts the journal and fetches only the missing ranges. Journal
lines are plain appends, not fsynced: after the process dies (kill, OOM, restart) the page
cache still holds both the journal and the bytes it describes, so the two agree. After a
reboot that is no longer true (data pages may be lost while a journal line survived), so
a staging area from an earlier boot (plan.json records /proc/sys/kernel/random/boot_id) is
thrown away, as is one whose plan differs from the new listing (the source changed).

Journal records describe one file on disk: when a run finds a journaled file missing (the
data/ folder was already moved into place, or someone deleted it), it appends a reset record
before creating the file again, so no later run trusts ranges or digests of the lost copy.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localmodel.errors import InsufficientSpaceError, UnsafePathError
from localmodel.fetch.ranges import RangeSet
from localmodel.sources.base import Digest

logger = logging.getLogger(__name__)

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


def is_no_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Recovered:
    """What an earlier run of the same plan left behind."""

    done: dict[int, RangeSet] = field(default_factory=dict)
    verified: dict[int, tuple[Digest | None, bool]] = field(default_factory=dict)
    #: It was adopted but its data/ folder was gone: a publish moved it into place and the
    #: process died before the manifest was written (see `Staging.intent`).
    data_missing: bool = False


def make_parents(root: Path, relative: str, known: set[str] | None = None) -> Path:
    """Create the folders of `relative` below `root`, refusing anything that is not a folder
    (a planted symlink must not redirect writes). Returns root / relative."""
    parts = relative.split("/")
    folder = root
    for depth, part in enumerate(parts[:-1], start=1):
        folder = folder / part
        key = "/".join(parts[:depth])
        if known is not None and key in known:
            continue
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise UnsafePathError(f"{key!r} exists and is not a folder") from None
        if known is not None:
            known.add(key)
    return root / relative


def filesystem_type(path: Path) -> str:
    """The type ("ext4", "tmpfs"...) of the filesystem holding `path`, "" if unknown."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:  # pragma: no cover - not Linux
        return ""
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def create_file(path: Path, size: int, *, preallocate: bool = True) -> int:
    """Open (creating if needed) a staging file for writing, sized to `size` bytes.

    With `preallocate`, blocks are reserved up front (posix_fallocate): no fragmentation and
    ENOSPC surfaces before any byte is fetched. tmpfs gains nothing from it and pays for
    zeroing every page (0.25 s/GiB measured), so callers skip it there.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"{path.name!r} is not a regular file")
        if size and not preallocate:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        elif size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if is_no_space(exc):
                    raise InsufficientSpaceError(f"no space left to allocate {path.name!r}") from exc
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)  # filesystems without fallocate: sparse is fine
    except BaseException:
        os.close(fd)
        raise
    return fd


def allocated_bytes(path: Path) -> int:
    """Bytes the filesystem already holds for `path` (0 if it does not exist)."""
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


class Staging:
    """One model's staging folder and its journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = path / "data"
        self.archive = path / "archive"
        self.old = path / "old"
        #: The manifest a publish is about to write; with data/ gone, proof the publish got
        #: as far as moving the folder into place.
        self.intent = path / "manifest.json"
        self._journal_fd: int | None = None
        self.known_folders: set[str] = set()
        #: Whether to posix_fallocate staging files (not on tmpfs, see `create_file`).
        self.preallocate = True

    def open(self, plan: Mapping[str, Any]) -> Recovered:
        """Adopt the staging area if it holds the same plan from this boot, else start afresh."""
        stored = self._read_plan()
        current = {**plan, "boot_id": boot_id()}
        recovered = Recovered()
        if stored is not None and stored == current and current["boot_id"]:
            recovered = self._read_journal()
            recovered.data_missing = not self.data.is_dir()
            logger.info("resuming from staging", extra={"staging": str(self.path)})
        elif self.path.exists():
            logger.info("discarding stale staging", extra={"staging": str(self.path)})
            self.wipe()
        self.path.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        self.preallocate = filesystem_type(self.path) != "tmpfs"
        if stored != current:
            self._write_plan(current)
        self._journal_fd = os.open(self.path / "journal.jsonl",
                                   os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        return recovered

    def _read_plan(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.path / "plan.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _write_plan(self, plan: Mapping[str, Any]) -> None:
        temporary = self.path / "plan.json.tmp"
        temporary.write_text(json.dumps(plan, sort_keys=True))
        os.replace(temporary, self.path / "plan.json")

    def _read_journal(self) -> Recovered:
        recovered = Recovered()
        try:
            lines = (self.path / "journal.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return recovered
        for line in lines:
            try:
                record = json.loads(line)
                index = int(record["f"])
                if record.get("reset"):
                    recovered.done.pop(index, None)
                    recovered.verified.pop(index, None)
                elif "sha256" in record:
                    sha256, local = record["sha256"], record.get("local")
                    digest = (Digest("sha256", str(sha256)) if sha256 is not None
                              else Digest(**local) if local else None)
                    recovered.verified[index] = (digest, bool(record["checked"]))
                else:
                    recovered.done.setdefault(index, RangeSet()).add(int(record["s"]), int(record["e"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a killed process
        return recovered

    def _append(self, record: Mapping[str, Any]) -> None:
        assert self._journal_fd is not None, "staging not opened"
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            os.write(self._journal_fd, line)  # O_APPEND: one write per line is atomic
        except OSError as exc:
            if is_no_space(exc):
                raise InsufficientSpaceError("no space left for the staging journal") from exc
            raise

    def record_range(self, index: int, start: int, end: int) -> None:
        self._append({"f": index, "s": start, "e": end})

    def record_verified(self, index: int, local: Digest | None, checked: bool) -> None:
        """File `index` is complete and verified; `local` is the digest its bytes were hashed with."""
        sha256 = local.value if local is not None and local.algorithm == "sha256" else None
        record: dict[str, Any] = {"f": index, "sha256": sha256, "checked": checked}
        if local is not None and sha256 is None:
            record["local"] = {"algorithm": local.algorithm, "value": local.value,
                               "part_size": local.part_size}
        self._append(record)

    def record_reset(self, index: int) -> None:
        """File `index` starts again from nothing: earlier records of it no longer count."""
        self._append({"f": index, "reset": True})

    def write_intent(self, text: str) -> None:
        temporary = self.path / "manifest.json.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.intent)

    def read_intent(self) -> str | None:
        try:
            return self.intent.read_text(encoding="utf-8")
        except OSError:
            return None

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    def wipe(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
