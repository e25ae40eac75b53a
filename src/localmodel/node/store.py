"""The agent's model store on disk: which storage keys exist, which are complete, and removal.

The layout is the download engine's `Layout.in_store` (KServe's folder plus two siblings):

    <root>/                        the host folder mounted at /mnt/models
    ├── models/<key>/              the model, what pods mount (KServe's layout, unchanged)
    ├── manifests/<key>.json       proof the folder is complete, written last by the engine
    ├── staging/<key>/             partial downloads, resumable
    ├── blobs/<alg>/<hex>          the content store (sha256, blake3): shared files are hard
    │                              links to one entry (fetch/blobs.py); unreferenced entries
    │                              (link count 1) are collected every pass
    └── agent-state.json           when each model was last scrubbed; manifests withdrawn

Only names shaped like storage keys (16 lower-case hex digits) are ever looked at or removed;
anything else under these folders is left alone. Symlinks are never followed: a symlink where a
model folder belongs is reported as a conflict and left in place, and removal deletes the
storage folders themselves with fd-based `shutil.rmtree`, which does not follow links inside.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from threading import Lock

from localmodel.api.keys import is_storage_key
from localmodel.fetch import adopt as engine_adopt
from localmodel.fetch import download as engine_download
from localmodel.fetch.blobs import BlobStore, Collected, store_key
from localmodel.fetch.layout import Layout
from localmodel.fetch.manifest import (
    Manifest,
    ManifestFile,
    read_manifest,
    remove_manifest,
    verify_full,
    verify_quick,
)
from localmodel.fetch.options import FetchOptions
from localmodel.fetch.progress import Progress
from localmodel.fetch.staging import allocated_bytes
from localmodel.node.plan import DiskState, Observed
from localmodel.sources.base import Settings
from localmodel.sources.registry import SourceFactory
from localmodel.sources.uris import redact_uri

logger = logging.getLogger(__name__)

_MANIFEST_SUFFIX = ".json"
_STATE_FILE = "agent-state.json"
_LOCK_SUFFIX = ".lock"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def manifest_digest(manifest: Manifest) -> str:
    """One digest for the whole model: sha256 over the sorted `path size digest` lines, each
    file's digest its sha256 (as before), else the local digest it was verified with."""
    import hashlib

    def digest(item: ManifestFile) -> str | None:
        if item.sha256 is not None or item.local is None:
            return item.sha256
        return f"{item.local.algorithm}:{item.local.value}"

    lines = sorted(f"{f.path}\0{f.size}\0{digest(f)}\n" for f in manifest.files)
    return "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class DiskUsage:
    capacity_bytes: int
    free_bytes: int


class ModelStore:
    """Read and change the model folders of one root. Thread-safe for distinct keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models_dir = root / "models"
        self.blobs = BlobStore(root / "blobs")
        self._state_lock = Lock()

    # --- layout ---------------------------------------------------------------------------

    def layout(self, key: str) -> Layout:
        if not is_storage_key(key):
            raise ValueError(f"not a storage key: {key!r}")
        return Layout.in_store(self.root, key)

    def ensure_root(self) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def keys_on_disk(self) -> set[str]:
        """Storage keys with anything on disk: a model folder, a manifest or staging data."""
        keys: set[str] = set()
        for folder, suffix in (("models", ""), ("manifests", _MANIFEST_SUFFIX), ("staging", "")):
            try:
                names = os.listdir(self.root / folder)
            except FileNotFoundError:
                continue
            for name in names:
                if suffix:
                    if not name.endswith(suffix):
                        continue
                    name = name[: -len(suffix)]
                elif folder == "staging" and name.endswith(_LOCK_SUFFIX):
                    name = name[: -len(_LOCK_SUFFIX)]  # a lock left by a finished download
                if is_storage_key(name):
                    keys.add(name)
        return keys

    # --- observing ------------------------------------------------------------------------

    def observe(self, key: str, uri: str, *, scrubbed_at: datetime | None = None) -> Observed:
        """What the folder of `key` holds, checked against its manifest by names and sizes."""
        layout = self.layout(key)
        try:
            st = os.lstat(layout.dest)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a folder"
            return Observed(
                DiskState.CONFLICT,
                problem=f"{layout.dest} is {kind}; localmodel never follows or removes it",
            )
        manifest = read_manifest(layout)
        if manifest is None:
            return Observed(DiskState.ABSENT)
        completed = parse_time(manifest.completed_at)
        common = {
            "uri": uri if manifest.source == redact_uri(uri) else manifest.source,
            "bytes_total": manifest.total_size,
            "files_total": len(manifest.files),
            "revision": manifest.revision,
            "digest": manifest_digest(manifest),
            "completed_at": completed,
            "verified_at": max(filter(None, (completed, scrubbed_at)), default=None),
        }
        linked: list[tuple[int, int, int]] = []
        problems = verify_quick(layout, manifest, linked=linked)
        if problems:
            return Observed(DiskState.DAMAGED, problem=_summary(problems), **common)  # type: ignore[arg-type]
        return Observed(DiskState.PRESENT, linked=frozenset(linked),  # type: ignore[arg-type]
                        linked_bytes=sum(size for _, _, size in linked), **common)

    def partial_bytes(self, key: str) -> int:
        """Bytes the filesystem already holds for this key's staging area."""
        total = 0
        staging = self.layout(key).staging
        for folder, _dirs, files in os.walk(staging, followlinks=False):
            for name in files:
                total += allocated_bytes(Path(folder, name))
        return total

    def collect_blobs(self) -> Collected:
        """Remove the content store's entries that no model or download links to any more."""
        collected = self.blobs.collect()
        if collected.removed:
            logger.info("content store: removed entries no model uses", extra={
                "entries": collected.removed, "bytes": collected.freed_bytes})
        return collected

    def reusable(self, files: list[tuple[str, int]]) -> dict[str, tuple[int, int, int]]:
        """Of the (sha256, size) files a listing names, those the content store holds, as
        sha256 -> (st_dev, st_ino, size): a download links them instead of writing them."""
        found: dict[str, tuple[int, int, int]] = {}
        for sha256, size in files:
            entry = self.blobs.lookup(sha256, size)
            if entry is not None:
                found[sha256] = (*entry.inode, entry.size)
        return found

    def usage(self) -> DiskUsage:
        self.ensure_root()
        usage = shutil.disk_usage(self.models_dir)
        return DiskUsage(capacity_bytes=usage.total, free_bytes=usage.free)

    # --- changing ---------------------------------------------------------------------------

    def download(
        self,
        key: str,
        uri: str,
        *,
        settings: Settings,
        options: FetchOptions,
        progress: Callable[[Progress], None],
        source_factory: SourceFactory | None = None,
    ) -> Manifest:
        """Run the engine into this key's layout. To cancel, raise from `progress`: the engine
        stops its workers and keeps staging, so the next call resumes. `source_factory`
        (peer-to-peer fill) replaces the registry's `open_source`."""
        # adoption only through `adopt`, which knows which folders this agent found damaged
        manifest = engine_download(uri, self.layout(key), settings=settings,
                                   options=dataclasses.replace(options, adopt=False), progress=progress,
                                   source_factory=source_factory)
        self._set_withdrawn(key, False)
        return manifest

    def adopt(
        self,
        key: str,
        uri: str,
        *,
        settings: Settings,
        options: FetchOptions,
        progress: Callable[[Progress], None],
        source_factory: SourceFactory | None = None,
    ) -> Manifest | None:
        """Keep a folder that holds the model without a manifest (KServe's agent left it):
        its manifest after hashing every file, or None when it does not qualify.

        A folder whose manifest this agent withdrew (a scrub found damage) is never adopted: its
        sizes still match, and without a provider digest nothing else would catch the damage."""
        if key in self.withdrawn():
            return None
        return engine_adopt(uri, self.layout(key), settings=settings, options=options, progress=progress,
                            source_factory=source_factory)

    def scrub(self, key: str) -> list[str]:
        """Re-hash every file; problems found (empty when the model is intact or gone)."""
        return self.scrub_shared(key)[0]

    def scrub_shared(self, key: str) -> tuple[list[str], frozenset[tuple[int, int]]]:
        """`scrub`, and the (st_dev, st_ino) of the damaged files that other models may share
        (more than one link): their content store entries are evicted at once, so no download
        is handed those bytes, and the caller can repair every model holding them."""
        layout = self.layout(key)
        manifest = read_manifest(layout)
        if manifest is None:
            return [], frozenset()
        mismatched: list[str] = []
        problems = verify_full(layout, manifest, mismatched=mismatched)
        shared: set[tuple[int, int]] = set()
        keys = {item.path: store_key(item.sha256, item.local) for item in manifest.files}
        for path in mismatched:
            try:
                st = os.lstat(layout.dest / path)
            except FileNotFoundError:
                continue
            if st.st_nlink > 1:
                shared.add((st.st_dev, st.st_ino))
                key = keys.get(path)
                if key is not None:
                    self.blobs.evict(key[1], (st.st_dev, st.st_ino), key[0])
        return problems, frozenset(shared)

    def discard_leftover_staging(self, key: str) -> bool:
        """Remove the staging folder of a complete model (a download that died after writing
        its manifest leaves one). Skipped while a download holds the key's lock."""
        layout = self.layout(key)
        try:
            if not stat.S_ISDIR(os.lstat(layout.staging).st_mode):
                return False
        except FileNotFoundError:
            return False
        fd = os.open(self._lock_path(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            shutil.rmtree(layout.staging, ignore_errors=True)
        finally:
            os.close(fd)
        return True

    def _lock_path(self, key: str) -> Path:
        staging = self.layout(key).staging
        return staging.parent / f"{staging.name}{_LOCK_SUFFIX}"

    def withdraw(self, key: str) -> None:
        """Remove the manifest, so the folder no longer counts as complete (and is not adopted)."""
        self._set_withdrawn(key, True)
        remove_manifest(self.layout(key))

    def delete(self, key: str) -> list[str]:
        """Remove the model folder, its manifest and staging data. Returns what was left alone.

        The manifest goes first, so a crash half-way never leaves a manifest vouching for a
        half-deleted folder.
        """
        layout = self.layout(key)
        kept: list[str] = []
        remove_manifest(layout)
        for path in (layout.dest, layout.staging):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            else:
                kept.append(f"{path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a folder'}")
        try:
            # Deleted only when no download of this key runs (the caller's rule), so nobody
            # holds it; left behind, one lock file per model ever cached would pile up.
            os.unlink(self._lock_path(key))
        except FileNotFoundError:
            pass
        self.forget_scrub(key)
        self._set_withdrawn(key, False)
        return kept

    # --- scrub times ------------------------------------------------------------------------

    def _state_path(self) -> Path:
        return self.root / _STATE_FILE

    def _read_state(self) -> dict[str, object]:
        try:
            raw = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def _write_state(self, state: Mapping[str, object]) -> None:
        temporary = self._state_path().with_name(f".{_STATE_FILE}.tmp")
        temporary.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
        os.replace(temporary, self._state_path())

    def scrub_times(self) -> dict[str, datetime]:
        scrubbed = self._read_state().get("scrubbed")
        if not isinstance(scrubbed, dict):
            return {}
        times = {k: parse_time(v) for k, v in scrubbed.items() if is_storage_key(k) and isinstance(v, str)}
        return {k: v for k, v in times.items() if v is not None}

    def _write_scrub_times(self, times: Mapping[str, datetime]) -> None:
        state = self._read_state()
        state["scrubbed"] = {k: v.strftime("%Y-%m-%dT%H:%M:%SZ") for k, v in sorted(times.items())}
        self._write_state(state)

    def record_scrub(self, key: str, moment: datetime) -> None:
        with self._state_lock:
            times = self.scrub_times()
            times[key] = moment
            self._write_scrub_times(times)

    def forget_scrub(self, key: str) -> None:
        with self._state_lock:
            times = self.scrub_times()
            if times.pop(key, None) is not None:
                self._write_scrub_times(times)

    def withdrawn(self) -> set[str]:
        """Keys whose manifest this agent withdrew and that were not downloaded since."""
        keys = self._read_state().get("withdrawn")
        return {k for k in keys if isinstance(k, str) and is_storage_key(k)} if isinstance(keys, list) else set()

    def _set_withdrawn(self, key: str, withdrawn: bool) -> None:
        with self._state_lock:
            keys = self.withdrawn()
            if (key in keys) == withdrawn:
                return
            keys = keys | {key} if withdrawn else keys - {key}
            state = self._read_state()
            state["withdrawn"] = sorted(keys)
            self._write_state(state)


def _summary(problems: list[str], limit: int = 3) -> str:
    shown = "; ".join(problems[:limit])
    more = len(problems) - limit
    return f"{shown} (and {more} more)" if more > 0 else shown
