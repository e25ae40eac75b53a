"""The content store: each verified file's bytes once per node, however many models hold them.

    <root>/blobs/sha256/<hex>     one entry per content (the sha256 of the bytes, lower-case hex)
    <root>/blobs/blake3/<hex>     the same, for files whose local digest is BLAKE3
    <root>/models/<key>/<path>    a hard link to that entry: the same inode, a plain file

An entry is named by the cryptographic digest the engine computed over the file's bytes while
downloading it (one hash pass per byte, issue 14): sha256 where the source names one (OCI,
Hugging Face LFS, S3 SHA-256 checksums: the download checked it), BLAKE3 where the source names
none (plain HTTP, file://, pvc://, small Hugging Face git files: `hashing.LOCAL_ALGORITHM`).
Each algorithm has its own folder; both are 256-bit, collision-resistant hashes, so either name
stands for the bytes. Files hashed with anything weaker (a CRC, MD5, an S3 ETag: forgeable or
collidable) never enter. The cost of two folders: the same bytes fetched once from an HTTP
origin and once as a Hugging Face LFS file are two entries, not one (computing the other
digest as well would double the CPU per byte, which is what issue 14 removed); files of the
same kind of source still share among themselves. Only sha256 entries can spare a download
(listings name sha256, never BLAKE3); BLAKE3 entries are shared after the bytes are fetched.

Models or revisions that share files (the same weights under two tags, a modelcar and a
ModelPack of the same files, two Hugging Face revisions whose shards did not change) keep the
bytes once. `models/` is unchanged for whoever reads it (pods, KServe's orphan sweep, peers):
a hard link is an ordinary file. The store sits beside `models/` under the same root, on the
same filesystem as staging, so every link is a plain link(2).

Rules, and why they make sharing safe:

- **Only verified bytes enter.** An entry is a hard link of a staging file whose sha256 (or
  BLAKE3) the engine computed from the bytes themselves while downloading (`enter`); its name
  is that digest, never a digest someone else claims. Downloads made without verification never enter.
- **An entry appears whole or not at all.** link(2) is atomic and the file is complete (and
  fdatasync'ed) before it gets the name; a crash leaves the name or no name, never half a file.
- **Reuse re-checks.** Before a new model is given an entry, the entry is hashed again (when the
  download verifies): bytes that rotted on disk since they entered are evicted from the store,
  never spread to one more model. A source whose listing names a file's sha256 (OCI blobs,
  Hugging Face LFS, S3 full-object SHA-256 checksums) then needs no download for files the store
  holds, except `PROBE_SIZE` bytes at a random offset that must equal the entry's: a listing is
  only a claim, and a cache shared by tenants must not hand one tenant's private weights to
  another who merely knows their sha256 and lists it from an origin of his own. Whoever can
  answer the probe holds the content anyway. (What remains observable: that the node holds
  some content, to an origin that lists its digest and sees a probe instead of a download.)
- **Never written in place.** An entry's inode is every sharing model's file: it is made
  read-only (0444), and the engine never opens a file with more than one link for writing (a
  staging file found linked is replaced, not written through). Repair replaces links.
- **Garbage.** An entry whose link count is 1 (only the store's name) belongs to no model and
  no download: `collect` removes it. Deleting a model removes its names only, so no other
  model is ever damaged, and its bytes leave the disk with the last link.
- **Fallback.** Where links fail (another filesystem, EMLINK, a filesystem without hard
  links), the file is kept as it is, unshared, and this is logged once: never a failure.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from localmodel.fetch.hashing import file_hexdigest
from localmodel.sources.base import Digest

logger = logging.getLogger(__name__)

#: Files smaller than this are not shared: configs and tokenizers would cost one entry each
#: (a name, a link at publish, an lstat per collection) for next to no bytes saved.
MIN_SIZE = 64 * 1024
#: Bytes read back from the origin, at a random offset, before a file is taken from the store
#: on the strength of a listed sha256: the origin must show it holds the content ("Reuse
#: re-checks" above; `engine._Download._origin_holds`).
PROBE_SIZE = 64 * 1024
#: The digests entries are named by, one folder each (see above); the first is what
#: listings name.
ALGORITHMS: tuple[str, ...] = ("sha256", "blake3")
_HEX = frozenset("0123456789abcdef")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(what: str, exc: OSError) -> None:
    """Links failing is never an error (the file stays the model's own), but worth one line
    per cause: per kind of step and errno, not per file."""
    key = f"{what}:{exc.errno}"
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("content store: files are kept unshared", extra={"what": what, "error": str(exc)})


def is_sha256(value: str | None) -> bool:
    return is_hex256(value)


def is_hex256(value: str | None) -> bool:
    """64 lower-case hex digits: a sha256 or a BLAKE3 (its default 32-byte output)."""
    return value is not None and len(value) == 64 and set(value) <= _HEX


def store_key(sha256: str | None, local: Digest | None) -> tuple[str, str] | None:
    """(algorithm, hex) naming a verified file's entry: its sha256, else its local digest when
    that is one of `ALGORITHMS`; None when the file cannot enter (a CRC, MD5, ETag, or none)."""
    if sha256 is not None:
        return ("sha256", sha256) if is_hex256(sha256) else None
    if local is not None and local.algorithm in ALGORITHMS and is_hex256(local.value):
        return local.algorithm, local.value
    return None


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    #: (st_dev, st_ino): what a model's file must be to share this entry's bytes.
    inode: tuple[int, int]


@dataclass(frozen=True)
class Collected:
    """What one `collect` did."""

    removed: int = 0
    freed_bytes: int = 0
    kept: int = 0


class BlobStore:
    """The store under one root. Thread- and process-safe: every change is one link, rename
    or unlink, and races only ever cost sharing, never bytes (see `collect`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, algorithm: str = "sha256") -> Path:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"no store folder for {algorithm!r}")
        return self.root / algorithm

    def path(self, value: str, algorithm: str = "sha256") -> Path:
        if not is_hex256(value):
            raise ValueError(f"not a {algorithm}: {value!r}")
        return self.folder(algorithm) / value

    def _real_folders(self, algorithm: str = "sha256") -> bool | None:
        """True when the store's folders are real folders, None when they are missing, False
        when a name is something else (a symlink planted there must not take lookups, links
        or collection elsewhere: the store is then not used, and this is logged once)."""
        for folder in (self.root, self.folder(algorithm)):
            try:
                st = os.lstat(folder)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat.S_ISDIR(st.st_mode):
                _warn_once("use the store", OSError(f"{folder} is not a folder"))
                return False
        return True

    def _ensure(self, algorithm: str = "sha256") -> bool:
        """Create the store's folders if missing; False when the store cannot be used."""
        for folder in (self.root, self.folder(algorithm)):
            try:
                os.mkdir(folder, 0o755)
            except FileExistsError:
                pass
            except OSError as exc:
                _warn_once("create the store", exc)
                return False
        return self._real_folders(algorithm) is True

    def lookup(self, value: str, size: int, algorithm: str = "sha256") -> Entry | None:
        """The entry for this content, None if there is none (or something else has its name)."""
        if not self._real_folders(algorithm):
            return None
        path = self.path(value, algorithm)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            return None
        return Entry(path, st.st_size, (st.st_dev, st.st_ino))

    def evict(self, value: str, inode: tuple[int, int] | None = None, algorithm: str = "sha256") -> None:
        """Remove the store's name for this content (when it still names `inode`): the models
        holding it keep their links; the store just stops handing it out."""
        path = self.path(value, algorithm)
        try:
            if inode is not None:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) != inode:
                    return
            os.unlink(path)
            logger.warning("content store: evicted an entry whose bytes no longer match its name",
                           extra={"algorithm": algorithm, "digest": value})
        except FileNotFoundError:
            pass

    def checked(self, value: str, size: int, *, verify: bool, algorithm: str = "sha256") -> Entry | None:
        """The entry for this content, re-hashed first when `verify`: an entry whose bytes no
        longer match its name is evicted and None is returned."""
        entry = self.lookup(value, size, algorithm)
        if entry is None or not verify:
            return entry
        try:
            actual = file_hexdigest(entry.path, algorithm)
        except FileNotFoundError:
            return None  # collected meanwhile
        if actual != value:
            self.evict(value, entry.inode, algorithm)
            return None
        return entry

    def enter(self, file: Path, value: str, algorithm: str = "sha256") -> bool:
        """Give the verified file `file` (whose content hashes to `value` with `algorithm`) a
        name in the store, made read-only. False when it stays unshared (no links here, or the
        name is taken)."""
        if not self._ensure(algorithm):
            return False
        try:
            os.chmod(file, 0o444, follow_symlinks=False)
        except (NotImplementedError, OSError):
            pass  # the mode is a guard, not the guarantee
        try:
            os.link(file, self.path(value, algorithm), follow_symlinks=False)
        except FileExistsError:
            return False
        except OSError as exc:  # EXDEV, EMLINK, EPERM (protected_hardlinks), ENOSPC, EACCES...
            _warn_once("link into the store", exc)
            return False
        return True

    def link_to(self, entry: Entry, target: Path, spare: Path) -> bool:
        """Make `target` a link to `entry`, atomically: the link is made at `spare` (outside
        any folder being published) and renamed over `target`. False when links fail here or
        the entry was collected meanwhile; `target` is then untouched."""
        try:
            os.unlink(spare)
        except FileNotFoundError:
            pass
        try:
            os.link(entry.path, spare, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            _warn_once("link from the store", exc)
            return False
        st = os.lstat(spare)
        if (st.st_dev, st.st_ino) != entry.inode:  # replaced meanwhile: not what was checked
            os.unlink(spare)
            return False
        os.rename(spare, target)
        return True

    def entries(self) -> Iterable[tuple[str, str, os.stat_result]]:
        """(algorithm, hex, stat) of every entry, in every algorithm's folder."""
        for algorithm in ALGORITHMS:
            if not self._real_folders(algorithm):
                continue
            try:
                scan = os.scandir(self.folder(algorithm))
            except (FileNotFoundError, NotADirectoryError):
                continue
            with scan:
                for item in scan:
                    if not is_hex256(item.name):
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield algorithm, item.name, st

    def collect(self) -> Collected:
        """Remove every entry no model or download links to (link count 1).

        Racing a download that is linking the same entry costs at most that file's sharing: its
        own link keeps the bytes, and it re-enters them at publish."""
        removed = freed = kept = 0
        for algorithm, name, st in self.entries():
            if not stat.S_ISREG(st.st_mode):
                continue  # never ours: left alone
            if st.st_nlink > 1:
                kept += 1
                continue
            try:
                os.unlink(self.folder(algorithm) / name)
            except FileNotFoundError:
                continue
            removed += 1
            freed += st.st_size
        return Collected(removed=removed, freed_bytes=freed, kept=kept)
