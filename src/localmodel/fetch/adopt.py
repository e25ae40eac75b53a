"""Adoption: a destination folder that already holds the model, but no manifest, is kept.

This is how a node moves from KServe's agent without downloading again: KServe's
storage-initializer Jobs leave `<root>/models/<storageKey>/` with exactly the source's files (the
same layout), and no manifest. A folder is adopted when

- it is a real folder (not a symlink), and no manifest file exists for it at all (a manifest
  that exists but does not match means the folder belongs to another download: never adopted);
- the model is not a single archive (KServe unpacked it; the listing cannot vouch for the
  unpacked files);
- every listed file is there as a regular file with the listed size, and nothing else is, except
  Hugging Face's download bookkeeping `.cache/huggingface/` (snapshot_download with `local_dir`
  leaves it; it is removed on adoption);
- every file hashes to the provider's digest where the listing gives one (sha256, md5, crc32c,
  multipart ETag with a known part size, as in a download). Where the provider gives none (plain
  HTTP without a digest header, a multipart ETag without its part size), names and sizes are all
  the evidence there is.

Every byte is read once (the provider digest, else BLAKE3 for the manifest, which later scrubs
compare against), so adoption costs a full read of the model instead of a download. Anything
that does not qualify is left to the normal download, which replaces the folder atomically.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localmodel.errors import IntegrityError
from localmodel.fetch.hashing import FileHasher
from localmodel.fetch.layout import HIDDEN, Layout
from localmodel.fetch.manifest import ManifestFile
from localmodel.fetch.progress import Progress, RateMeter, eta
from localmodel.sources.base import RemoteFile

logger = logging.getLogger(__name__)

#: Left in a folder by huggingface_hub.snapshot_download(local_dir=...): not model files.
HF_BOOKKEEPING = ".cache/huggingface/"
_READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    """A folder that passed the cheap checks (names, types, sizes)."""

    files: tuple[RemoteFile, ...]
    #: Extra entries to remove once adopted (Hugging Face bookkeeping).
    leftovers: tuple[str, ...]


def _scan(root: Path, skip_hidden_root: bool) -> dict[str, os.stat_result]:
    """Every non-folder entry below `root` (relative POSIX path → lstat), links not followed."""
    found: dict[str, os.stat_result] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in os.scandir(folder):
            if skip_hidden_root and folder == root and entry.name == HIDDEN:
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append(Path(entry.path))
            else:
                found[Path(entry.path).relative_to(root).as_posix()] = st
    return found


def candidate(layout: Layout, files: Sequence[RemoteFile]) -> tuple[Candidate | None, str]:
    """The cheap checks: (a candidate, "") or (None, why not)."""
    if os.path.lexists(layout.manifest):
        return None, "a manifest exists"
    try:
        st = os.lstat(layout.dest)
    except FileNotFoundError:
        return None, "no folder"
    if not stat.S_ISDIR(st.st_mode):
        return None, "not a folder"
    found = _scan(layout.dest, skip_hidden_root=layout.in_place)
    if not found:
        return None, "empty folder"
    for item in files:
        entry = found.get(item.path)
        if entry is None:
            return None, f"missing: {item.path}"
        if not stat.S_ISREG(entry.st_mode):
            return None, f"not a regular file: {item.path}"
        if entry.st_size != item.size:
            return None, f"size: {item.path} has {entry.st_size} bytes, the source lists {item.size}"
    listed = {item.path for item in files}
    extras = sorted(path for path in found if path not in listed)
    unexpected = [path for path in extras if not path.startswith(HF_BOOKKEEPING)]
    if unexpected:
        return None, f"unexpected: {unexpected[0]}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1
                                                      else "")
    return Candidate(tuple(files), tuple(extras)), ""


def hash_files(layout: Layout, chosen: Candidate, *, verify_md5: bool, progress: Callable[[Progress], None] | None,
               interval: float) -> tuple[ManifestFile, ...] | None:
    """Hash every file once (the provider digest, else BLAKE3); None when a digest disagrees.

    `progress` may raise to cancel (the agent does); nothing has been changed by then.
    """
    total = sum(item.size for item in chosen.files)
    done = 0
    meter = RateMeter()
    last_report = 0.0
    entries: list[ManifestFile] = []
    buffer = memoryview(bytearray(_READ_SIZE))

    def report(files_done: int) -> None:
        if progress is not None:
            rate = meter.sample(done)
            progress(Progress(phase="verify", bytes_done=done, bytes_total=total, files_done=files_done,
                              files_total=len(chosen.files), rate=rate, eta=eta(total - done, rate)))

    report(0)
    for index, item in enumerate(chosen.files):
        hasher = FileHasher(item.digest, verify_md5=verify_md5)
        fd = os.open(layout.dest / item.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            while count := os.readv(fd, [buffer]):
                hasher.update(buffer[:count])
                done += count
                if progress is not None and time.monotonic() - last_report >= interval:
                    last_report = time.monotonic()
                    report(index)
        finally:
            os.close(fd)
        try:
            result = hasher.finish(item.path, item.size)
        except IntegrityError as error:
            logger.info("existing folder not adopted", extra={"dest": str(layout.dest), "why": str(error)})
            return None
        entries.append(ManifestFile(path=item.path, size=item.size, sha256=result.sha256, digest=item.digest,
                                    digest_checked=result.provider_checked,
                                    local=None if result.sha256 else result.local))
    report(len(chosen.files))
    return tuple(entries)


def remove_leftovers(layout: Layout, chosen: Candidate) -> None:
    """Remove the extra bookkeeping files, then the folders they leave empty."""
    folders: set[Path] = set()
    for relative in chosen.leftovers:
        path = layout.dest / relative
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != layout.dest:
            folders.add(parent)
            parent = parent.parent
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty: it holds model files too
