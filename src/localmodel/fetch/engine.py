"""The download engine: list, fetch ranges in parallel, hash, verify, publish atomically.

    download(uri, dest) ─┬─ 1. existing manifest for this URI and sizes match → return it
                         ├─ 2. list the source; drop directory markers; apply patterns;
                         │     check every path (see `paths`); a folder without a manifest
                         │     that holds exactly the listed files is adopted (`adopt`)
                         ├─ 3. open staging: adopt a same-plan, same-boot staging area
                         │     (resume) or start afresh; link files whose listed sha256
                         │     the content store holds (re-hashed) instead of fetching
                         │     them (`blobs`); check free space
                         ├─ 4. fetch: a thread pool runs ranged requests (`planning`),
                         │     writes with pwrite into preallocated files, journals
                         │     progress every `checkpoint_size`, and retries transient errors
                         │     with backoff; each file is hashed once, with the cheapest
                         │     digest its provider guarantees (`hashing`): a CRC per range,
                         │     from memory as the bytes arrive, combined at the end; or a
                         │     sequential hash (sha256, md5) that follows the contiguous
                         │     written prefix: from memory at the frontier, else re-read from
                         │     the page cache by a separate hashing thread, so hashing (and
                         │     the final fsync) overlaps the download and never stalls it;
                         │     a source that checked pieces against sha256 chaining values
                         │     (peer fill) lets the hash jump over them (`chaining`)
                         ├─ 5. verify: size and provider digest per file (IntegrityError)
                         ├─ 6. unpack a single-archive model (`archive`)
                         ├─ 6b. share: each verified file becomes a link to the content
                         │     store's entry for its sha256, or enters the store
                         └─ 7. publish: withdraw old manifest, rename folder into place,
                               write the new manifest, delete staging
Failures: integrity and no-space errors wipe staging; any other error keeps it so the
next run resumes where this one stopped. Nothing is ever written outside staging and dest.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType

from localmodel import __version__
from localmodel.errors import (
    InsufficientSpaceError,
    IntegrityError,
    LocalModelError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from localmodel.fetch import adopt as adoption
from localmodel.fetch import archive as archives
from localmodel.fetch import blobs as content
from localmodel.fetch import layers as oci_layers
from localmodel.fetch import manifest as manifests
from localmodel.fetch import patterns, planning
from localmodel.fetch.backoff import RetryBudget, backoff_delay
from localmodel.fetch.hashing import FileHasher, HashResult, NoHasher, crc_of_file, crc_update, file_sha256
from localmodel.fetch.layout import HIDDEN, Layout
from localmodel.fetch.manifest import Manifest, ManifestFile
from localmodel.fetch.options import FetchOptions
from localmodel.fetch.paths import check_tree
from localmodel.fetch.progress import Progress, ProgressCallback, RateMeter, eta
from localmodel.fetch.ranges import RangeSet
from localmodel.fetch.ratelimit import TokenBucket
from localmodel.fetch.staging import Staging, allocated_bytes, create_file, is_no_space, make_parents
from localmodel.sources.base import MAX_FILES_SETTING, Digest, Listing, ListingLimit, RemoteFile, Settings, Source
from localmodel.sources.registry import SourceFactory, open_source
from localmodel.sources.uris import redact_uri

logger = logging.getLogger(__name__)

#: Largest write() per call: ext4 here is ~10x slower per byte with 1 MiB+ writes.
WRITE_SIZE = 512 * 1024
_HASH_READ_SIZE = 1024 * 1024
#: Bytes that must arrive after a failure before the retry budget is reset, so a server that
#: drops every connection after a few bytes still exhausts the budget.
_PROGRESS_RESETS_RETRIES = 1024 * 1024
_NO_SETTINGS: Settings = MappingProxyType({})
#: Seconds between looks at the cancel flag while a worker waits for a shared request slot.
#: A waiter that looks goes to the back of the queue, so waiters are not served in order.
_SLOT_POLL = 0.25


class SharedBudget:
    """Budgets that several downloads running at once share, as one download would have them
    (the CLI's `SRC DEST` pairs): at most `concurrency` ranged requests in flight across all of
    them, one rate cap, and one stop: the first download that fails cancels the others (they
    keep their staging, to resume)."""

    def __init__(self, concurrency: int, rate_limit: float | None = None) -> None:
        self.slots = threading.BoundedSemaphore(concurrency)
        self.bucket = TokenBucket(rate_limit) if rate_limit else None
        self.cancelled = threading.Event()


def download(source_uri: str, dest: str | os.PathLike[str] | Layout, *,
             settings: Settings = _NO_SETTINGS, options: FetchOptions | None = None,
             progress: ProgressCallback | None = None,
             source_factory: SourceFactory | None = None,
             budget: SharedBudget | None = None) -> Manifest:
    """Fetch the model at `source_uri` into `dest` and return its manifest.

    `dest` is a folder path (see `Layout.for_path`) or an explicit `Layout`. `settings` are
    environment-style source settings (credentials, endpoints), never read from os.environ.
    `source_factory` replaces the registry's `open_source` (the node agent passes one that
    reads from peers); the manifest still names `source_uri`. `budget` is shared with other
    downloads running at the same time (its concurrency and rate cap replace the options').
    Raises an error from `localmodel.errors`; on error nothing appears at `dest`. A download
    stopped because another one sharing its budget failed raises `DownloadCancelled`.
    """
    options = options or FetchOptions()
    layout = dest if isinstance(dest, Layout) else Layout.for_path(dest)
    source_name = redact_uri(source_uri)
    with _exclusive(layout):
        if not options.force:
            existing = manifests.read_manifest(layout)
            if existing is not None and existing.source == source_name \
                    and (not options.verify or all(f.scrub_digest for f in existing.files)) \
                    and not manifests.verify_quick(layout, existing):
                logger.info("already complete", extra={"dest": str(layout.dest)})
                # A run that died after writing the manifest may have left staging behind.
                shutil.rmtree(layout.staging, ignore_errors=True)
                return existing
        source = (source_factory or open_source)(source_uri, with_file_limit(settings, options.max_files))
        try:
            return _Download(source, source_name, layout, options, progress, budget).run()
        except _Cancelled as exc:
            raise DownloadCancelled(f"{source_name}: stopped, another download failed") from exc
        finally:
            source.close()


def adopt(source_uri: str, dest: str | os.PathLike[str] | Layout, *,
          settings: Settings = _NO_SETTINGS, options: FetchOptions | None = None,
          progress: ProgressCallback | None = None,
          source_factory: SourceFactory | None = None) -> Manifest | None:
    """Adopt what `dest` already holds, without downloading anything: the manifest written, or
    None when the folder does not qualify (see `localmodel.fetch.adopt`). `download` does this
    itself first; callers that check budgets before downloading (the node agent) call it apart,
    since an adopted model needs no new space."""
    options = options or FetchOptions()
    layout = dest if isinstance(dest, Layout) else Layout.for_path(dest)
    with _exclusive(layout):
        source = (source_factory or open_source)(source_uri, settings)
        try:
            return _Download(source, redact_uri(source_uri), layout, options, progress).adopt_only()
        finally:
            source.close()


@contextmanager
def _exclusive(layout: Layout) -> Iterator[None]:
    """One download per destination at a time, across processes: a second caller waits, then
    finds the first one's manifest. (flock is reliable on local filesystems, which is where
    a node cache lives; correctness does not rest on it anyway, only on staging + rename.)"""
    layout.staging.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.staging.parent / f"{layout.staging.name}.lock",
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class _Cancelled(Exception):
    """Raised inside workers once another worker failed or the caller was interrupted."""


class DownloadCancelled(Exception):
    """A download sharing a `SharedBudget` stopped because another one failed (that one's
    error is the one to report)."""


@dataclass(slots=True)
class _File:
    """One file of the download (slotted: a model of 50,000 small files keeps 50,000)."""

    index: int
    remote: RemoteFile
    target: Path
    hasher: FileHasher | NoHasher
    done: RangeSet = field(default_factory=RangeSet)
    hashed: int = 0
    hashing: bool = False
    #: A hashing task for this file is waiting in the hash pool.
    queued: bool = False
    finished: bool = False
    fd: int | None = None
    result: HashResult | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Writers of one file take turns here. The kernel serializes them anyway (the inode
    #: lock), but a thread waiting on that lock spins on a CPU, while one waiting here sleeps.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    #: A link to a content store entry (verified, read-only): never opened for writing.
    reused: bool = False


class _Download:
    """One run of `download`: the state shared by the worker threads."""

    def __init__(self, source: Source, source_name: str, layout: Layout, options: FetchOptions,
                 progress: ProgressCallback | None, budget: SharedBudget | None = None) -> None:
        self.source = source
        self.source_name = source_name
        self.layout = layout
        self.options = options
        self.progress = progress
        self.staging = Staging(layout.staging)
        self.budget = budget
        self.cancelled = budget.cancelled if budget is not None else threading.Event()
        if budget is not None:
            self.bucket = budget.bucket
        else:
            self.bucket = TokenBucket(options.rate_limit) if options.rate_limit else None
        self.files: list[_File] = []
        self.bytes_done = 0
        self.files_done = 0
        #: Bytes linked from the content store instead of fetched (this run), and the bytes the
        #: origin sent to show it holds them (`_origin_holds`).
        self.bytes_reused = 0
        self.bytes_probed = 0
        #: Bytes of the published model that are links to store entries it did not bring.
        self.bytes_shared = 0
        self._reused_inodes: set[tuple[int, int]] = set()
        self.blobs = (content.BlobStore(layout.blobs)
                      if layout.blobs is not None and options.dedup and options.verify else None)
        self.phase = "download"
        self._counter_lock = threading.Lock()
        self._meter = RateMeter()
        self._local = threading.local()
        #: Catch-up hashing and finishing run here, off the download threads (see _request_hash).
        self._hash_pool: ThreadPoolExecutor | None = None
        self._hash_futures: list[Future[None]] = []
        self._hash_futures_lock = threading.Lock()
        #: A source that checks sha256 chaining values itself (peer fill, `fetch.chaining`):
        #: the hash jumps over the bytes it vouches for and reports where it got.
        self._chain_every = int(getattr(source, "chain_interval", 0) or 0)
        self._vouch = getattr(source, "vouch", None) if self._chain_every else None
        self._chained = getattr(source, "chained", None) if self._chain_every else None

    # -- 2. listing ------------------------------------------------------------------------

    def _list(self) -> Listing:
        budget = RetryBudget(self.options.backoff)
        while True:
            try:
                return self.source.list_files()
            except SourceUnavailableError as exc:
                if not budget.failed():
                    raise
                delay = backoff_delay(budget.failures, self.options.backoff,
                                      retry_after=exc.retry_after)
                logger.warning("retrying the listing after a transient error", extra={
                    "attempt": budget.failures, "delay": round(delay, 2), "error": str(exc)})
                time.sleep(delay)

    def _select(self, listing: Listing) -> list[RemoteFile]:
        if listing.layers:
            return self._select_blobs(listing)
        # Zero-byte "folder/" objects are how S3 consoles draw folders: not files.
        files = [f for f in listing.files if not f.path.endswith("/")]
        keep = set(patterns.select([f.path for f in files], self.options.allow_patterns,
                                   self.options.ignore_patterns))
        files = [f for f in files if f.path in keep]
        ListingLimit({MAX_FILES_SETTING: str(self.options.max_files)}, self.source_name).check(len(files))
        if not files:
            raise SourceNotFoundError(f"no files to download at {self.source_name}"
                                      + (" after applying patterns" if listing.files else ""))
        check_tree(f.path for f in files)
        return files

    def _select_blobs(self, listing: Listing) -> list[RemoteFile]:
        """A listing of layers: its files are blobs, all of them needed (patterns do not apply
        to blobs); the model's own paths are checked as the layers are applied."""
        files = list(listing.files)
        ListingLimit({MAX_FILES_SETTING: str(self.options.max_files)}, self.source_name).check(len(files))
        if not files:
            raise SourceNotFoundError(f"no layers to download at {self.source_name}")
        check_tree(f.path for f in files)
        listed = {f.path for f in files}
        missing = [layer.blob for layer in listing.layers if layer.blob not in listed]
        if missing:
            raise SourceNotFoundError(f"{self.source_name}: layer blob {missing[0]!r} is not listed")
        return files

    @staticmethod
    def _archive_kind(listing: Listing, files: list[RemoteFile]) -> str | None:
        if listing.layers:
            return "layers"
        if len(files) != 1 or listing.details.get("archive") == "none":
            return None
        return archives.archive_kind(files[0].path)

    # -- adoption --------------------------------------------------------------------------

    def adopt_only(self) -> Manifest | None:
        listing = self._list()
        selected = self._select(listing)
        return self._adopt(listing, selected, self._archive_kind(listing, selected))

    def _adopt(self, listing: Listing, selected: list[RemoteFile], kind: str | None) -> Manifest | None:
        if kind is not None:
            return None  # KServe unpacked the archive: the listing cannot vouch for its files
        chosen, why = adoption.candidate(self.layout, selected)
        if chosen is None:
            if why not in ("no folder", "a manifest exists"):
                logger.info("existing folder not adopted", extra={"dest": str(self.layout.dest), "why": why})
            return None
        entries = adoption.hash_files(self.layout, chosen, verify_md5=self.options.verify_md5,
                                      progress=self.progress, interval=self.options.progress_interval)
        if entries is None:
            return None
        adoption.remove_leftovers(self.layout, chosen)
        if self.options.fsync:
            _fsync_files(self.layout.dest, (entry.path for entry in entries))
        manifest = Manifest(
            source=self.source_name, revision=listing.revision, files=entries,
            total_size=sum(entry.size for entry in entries),
            completed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            localmodel_version=__version__, details={**listing.details, "adopted": "true"},
        )
        manifests.write_manifest(self.layout, manifest)
        self.staging.wipe()  # partial data of an earlier attempt is moot now
        logger.info("adopted existing folder", extra={
            "source": self.source_name, "dest": str(self.layout.dest), "bytes": manifest.total_size,
            "files": len(entries)})
        return manifest

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> Manifest:
        started = time.monotonic()
        listing = self._list()
        selected = self._select(listing)
        kind = self._archive_kind(listing, selected)
        if self.options.adopt and not self.options.force:
            adopted = self._adopt(listing, selected, kind)
            if adopted is not None:
                return adopted
        plan = {
            "format": 1,
            "source": self.source_name,
            "revision": listing.revision,
            "archive": kind,
            "verify": self.options.verify,
            "files": [[f.path, f.size, f.version,
                       f.digest.algorithm if f.digest else None,
                       f.digest.value if f.digest else None] for f in selected],
        }
        if listing.layers:  # only then, so plans of other sources stay as they were
            plan["layers"] = [[layer.blob, layer.kind, layer.path, layer.subtree,
                               layer.compression, layer.whiteouts] for layer in listing.layers]
        recovered = self.staging.open(plan)
        if recovered.data_missing:
            finished = self._finish_interrupted_publish()
            if finished is not None:
                return finished
        try:
            same = self._from_same_layers(listing, plan) if listing.layers else None
            if same is not None:
                manifest = same
            else:
                root = self.staging.archive if kind else self.staging.data
                root.mkdir(exist_ok=True)
                self._prepare(selected, root, recovered.done, recovered.verified)
                self._reuse()
                self._check_space()
                self._fetch_all()
                unpacked = self._unpack(kind, listing) if kind else None
                manifest = self._manifest(listing, unpacked, plan)
            self._share(manifest)
            self._publish(manifest)
        except (IntegrityError, InsufficientSpaceError):
            self._close_files()
            self.staging.wipe()
            raise
        except BaseException:
            self._close_files()
            self.staging.close()
            raise
        self._report(phase="done")
        elapsed = time.monotonic() - started
        logger.info("download complete", extra={
            "source": self.source_name, "dest": str(self.layout.dest), "bytes": manifest.total_size,
            "bytes_reused": self.bytes_reused, "bytes_probed": self.bytes_probed,
            "bytes_shared": self.bytes_shared,
            "seconds": round(elapsed, 3)})
        return manifest

    def _finish_interrupted_publish(self) -> Manifest | None:
        """A previous run moved data/ into place and died before writing the manifest: the
        manifest it meant to write is in staging. Write it if the folder still matches."""
        text = self.staging.read_intent()
        manifest = None
        if text is not None:
            try:
                manifest = Manifest.from_json(text)
            except (ValueError, KeyError, TypeError):
                manifest = None
        if manifest is None or manifest.source != self.source_name \
                or manifests.verify_quick(self.layout, manifest):
            return None  # the journaled files are gone: each is reset as it is started again
        manifests.write_manifest(self.layout, manifest)
        self.staging.wipe()
        logger.info("finished a publish interrupted by a crash", extra={"dest": str(self.layout.dest)})
        return manifest

    # -- 3. staging and space --------------------------------------------------------------

    def _prepare(self, selected: list[RemoteFile], root: Path, done: Mapping[int, RangeSet],
                 verified: Mapping[int, tuple[str | None, bool]]) -> None:
        for index, remote in enumerate(selected):
            target = make_parents(root, remote.path, self.staging.known_folders)
            hasher = (FileHasher(remote.digest, verify_md5=self.options.verify_md5,
                                 checkpoint_every=self._chain_every)
                      if self.options.verify else NoHasher())
            state = _File(index, remote, target, hasher)
            present = target.exists()
            if present and index not in verified and os.lstat(target).st_nlink > 1:
                # A link to a content store entry whose journal line a crash took: other
                # models' bytes, never to be written through. Drop this name and start over.
                os.unlink(target)
                present = False
            if not present and (index in done or index in verified):
                # The copy the journal describes is gone; never trust those records again.
                self.staging.record_reset(index)
            if present and index in verified:
                local, checked = verified[index]
                state.result = HashResult(local, checked)
                state.done.add(0, remote.size)
                state.hashed = remote.size
            elif present and remote.seekable:
                for start, end in done.get(index, ()):
                    state.done.add(start, min(end, remote.size))
            self.files.append(state)
        self.bytes_done = sum(f.done.covered() for f in self.files)
        self.files_done = sum(1 for f in self.files if f.result is not None)

    def _reuse(self) -> None:
        """Files whose listed sha256 the content store holds are linked from it, not fetched:
        each entry is re-hashed first (bytes that rotted are evicted and fetched afresh), then
        linked into staging and journaled as verified, so a resume trusts it. Runs before the
        first progress report: reused bytes count as done, never as fetched."""
        store = self.blobs
        if store is None:
            return
        wanted = [f for f in self.files if f.result is None and f.remote.size >= content.MIN_SIZE
                  and f.remote.digest is not None and f.remote.digest.algorithm.lower() == "sha256"
                  and content.is_sha256(f.remote.digest.value.lower())
                  and store.lookup(f.remote.digest.value.lower(), f.remote.size) is not None]
        if not wanted:
            return

        def take(state: _File) -> bool:
            assert state.remote.digest is not None
            sha256 = state.remote.digest.value.lower()
            # The probe first: a listing that names bytes its origin does not hold costs a
            # ranged read, not a re-hash of the entry.
            entry = store.lookup(sha256, state.remote.size)
            if entry is None or not self._origin_holds(state, entry.path):
                return False
            entry = store.checked(sha256, state.remote.size, verify=self.options.verify)
            if entry is None:
                return False
            partial = state.done.covered() or os.path.lexists(state.target)
            if not store.link_to(entry, state.target, self.staging.path / f".link-{state.index}"):
                return False  # what was fetched of it still counts
            if partial:
                self.staging.record_reset(state.index)  # the partial copy is gone
            self.staging.record_verified(state.index, Digest("sha256", sha256), True)
            with state.lock:
                self._reused_inodes.add(entry.inode)
                state.reused = True
                state.result = HashResult(Digest("sha256", sha256), True)
                state.done = RangeSet()
                state.done.add(0, state.remote.size)
                state.hashed = state.remote.size
                state.finished = True
                state.hasher = _FINISHED
            return True

        with ThreadPoolExecutor(max_workers=max(1, min(self.options.concurrency, len(wanted))),
                                thread_name_prefix="localmodel-reuse") as pool:
            taken = [state for state, ok in zip(wanted, pool.map(take, wanted)) if ok]
        self.bytes_reused = sum(f.remote.size for f in taken)
        self.bytes_done = sum(f.done.covered() for f in self.files)
        self.files_done = sum(1 for f in self.files if f.result is not None)
        if taken:
            logger.info("files taken from the content store, not fetched", extra={
                "dest": str(self.layout.dest), "files": len(taken), "bytes": self.bytes_reused})

    def _origin_holds(self, state: _File, entry: Path) -> bool:
        """Whether the origin holds the bytes its listing names: `PROBE_SIZE` bytes at a random
        offset must equal the store entry's. Without this, anyone who knows a file's sha256
        could list it from an origin of their own and be given the bytes from this node's store
        (another tenant's private weights). Any failure means "fetch it as usual"."""
        size = state.remote.size
        length = min(content.PROBE_SIZE, size)
        offset = secrets.randbelow(size - length + 1)
        try:
            got = b"".join(bytes(piece) for piece in self.source.read_range(state.remote.path, offset, length))
        except (LocalModelError, OSError) as exc:
            logger.info("origin not asked to prove it holds a file; fetching it", extra={
                "path": state.remote.path, "error": str(exc)})
            return False
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            expected = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if got != expected:
            logger.warning("the origin does not serve the bytes its listing's sha256 names; fetching the file",
                           extra={"path": state.remote.path, "offset": offset})
            return False
        with self._counter_lock:
            self.bytes_probed += length
        return True

    def _check_space(self) -> None:
        needed = sum(max(0, f.remote.size - allocated_bytes(f.target))
                     for f in self.files if f.result is None)
        free = _free_bytes(self.staging.path)
        if needed > free:
            raise InsufficientSpaceError(
                f"need {needed} more bytes in {self.staging.path.parent}, {free} free")

    # -- 4. fetching -----------------------------------------------------------------------

    def _fetch_all(self) -> None:
        for state in self.files:
            if state.result is None and state.remote.size == 0:
                self._open(state)
                self._advance_hash(state)
        resumed = [f for f in self.files if f.result is None and f.done.prefix_end() > 0]
        requests = planning.plan_requests(
            [f.remote.size if f.result is None else 0 for f in self.files],
            [f.done for f in self.files], self.options.chunk_size,
            [f.remote.seekable for f in self.files])
        self._report()
        if not requests and not resumed:
            return
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.options.concurrency, len(requests))),
                                  thread_name_prefix="localmodel-fetch")
        hashing = sum(1 for f in self.files if f.result is None and f.remote.size)
        self._hash_pool = ThreadPoolExecutor(
            max_workers=max(1, min(self.options.concurrency, hashing)),
            thread_name_prefix="localmodel-hash")
        for state in resumed:
            fd = self._open(state)
            if state.hasher.combinable:
                # The CRCs of what an earlier run wrote died with it: recomputed from disk,
                # once, at 10+ GB/s (a crash costs a re-read, never a re-fetch).
                for start, end in state.done:
                    state.hasher.add_range(start, end, crc_of_file(fd, state.hasher.algorithm, start, end))
            self._request_hash(state)  # what an earlier run left on disk
        # A few long-lived workers take requests from one queue: a model of 50,000 small files
        # must not cost 50,000 futures (each with its own lock and condition) up front.
        queue = deque(requests)

        slots = self.budget.slots if self.budget is not None else None

        def work() -> None:
            while not self.cancelled.is_set():
                if slots is None:
                    try:
                        request = queue.popleft()
                    except IndexError:
                        return
                    self._fetch(request)
                    continue
                # A request slot shared with other downloads, taken before the request: a
                # worker holding chunk 5 while chunk 1 waits for a slot would leave a gap at
                # the hash frontier, and everything after it to be re-read (measured: +25 %
                # wall on a network-bound download of SRC DEST pairs).
                while not slots.acquire(timeout=_SLOT_POLL):
                    self._check_cancelled()
                try:
                    try:
                        request = queue.popleft()
                    except IndexError:
                        return
                    self._fetch(request)
                finally:
                    slots.release()

        workers = max(1, min(self.options.concurrency, len(requests))) if requests else 0
        pending: set[Future[None]] = {pool.submit(work) for _ in range(workers)}
        try:
            while True:
                # Hash tasks are queued by download tasks before those finish, so once every
                # download is done, one more look finds the last of them.
                pending |= self._take_hash_futures()
                if not pending:
                    break
                finished, pending = wait(pending, timeout=self.options.progress_interval,
                                         return_when=FIRST_EXCEPTION)
                for future in finished:
                    error = future.exception()
                    if error is not None:
                        raise error
                self._report()
        except BaseException:
            self.cancelled.set()
            pool.shutdown(wait=True, cancel_futures=True)
            self._hash_pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        self._hash_pool.shutdown(wait=True)
        self._check_cancelled()  # workers stop early, without an error, when a sibling failed
        unfinished = [f.remote.path for f in self.files if f.result is None]
        if unfinished:  # pragma: no cover - would be an engine bug
            raise IntegrityError(f"download ended with unverified files: {unfinished[:3]}")

    def _open(self, state: _File) -> int:
        assert not state.reused, "a content store link is never opened for writing"
        with state.lock:
            if state.fd is None:
                state.fd = create_file(state.target, state.remote.size,
                                       preallocate=self.staging.preallocate)
            return state.fd

    def _fetch(self, request: planning.Request) -> None:
        state = self.files[request.file_index]
        fd = self._open(state)
        budget = RetryBudget(self.options.backoff)
        position = unrecorded = failed_at = request.start
        # A combinable digest: the CRC of [unrecorded, position), from memory, in any order.
        crc_algorithm = state.hasher.algorithm if state.hasher.combinable else ""
        crc = 0
        while position < request.end:
            self._check_cancelled()
            pieces = iter(self.source.read_range(state.remote.path, position, request.end - position))
            try:
                for piece in pieces:
                    view = memoryview(piece).cast("B")
                    if len(view) > request.end - position:
                        raise IntegrityError(f"{state.remote.path!r}: source sent more bytes than asked")
                    if self.bucket is not None:
                        self.bucket.take(len(view), cancelled=self.cancelled)
                    self._write(fd, view, position, state)
                    if crc_algorithm:
                        crc = crc_update(crc_algorithm, view, crc)
                    else:
                        self._hash_in_stream(state, view, position)
                    position += len(view)
                    if position - failed_at >= _PROGRESS_RESETS_RETRIES:
                        budget.progress()
                    if position - unrecorded >= self.options.checkpoint_size:
                        self._record(state, unrecorded, position, crc)
                        unrecorded, crc = position, 0
                    self._check_cancelled()
                if position < request.end:
                    raise SourceUnavailableError(
                        f"{state.remote.path!r}: source ended the range {request.end - position} "
                        "bytes early")
            except SourceUnavailableError as exc:
                if position > unrecorded:
                    self._record(state, unrecorded, position, crc)
                    unrecorded, crc = position, 0
                failed_at = position
                if not budget.failed():
                    raise
                delay = backoff_delay(budget.failures, self.options.backoff,
                                      retry_after=exc.retry_after)
                logger.warning("retrying after a transient error", extra={
                    "path": state.remote.path, "offset": position, "attempt": budget.failures,
                    "delay": round(delay, 2), "error": str(exc)})
                if self.cancelled.wait(delay):
                    raise _Cancelled() from exc
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
        if position > unrecorded:
            self._record(state, unrecorded, position, crc)

    def _write(self, fd: int, view: memoryview, offset: int, state: _File) -> None:
        written = 0
        total = len(view)
        try:
            while written < total:
                with state.write_lock:
                    written += os.pwrite(fd, view[written: written + WRITE_SIZE], offset + written)
        except OSError as exc:
            if is_no_space(exc):
                raise InsufficientSpaceError(
                    f"no space left writing {state.remote.path!r} in staging") from exc
            raise

    def _record(self, state: _File, start: int, end: int, crc: int = 0) -> None:
        """Bytes [start, end) are written (and `crc` is their CRC, for a combinable digest)."""
        self.staging.record_range(state.index, start, end)
        with state.lock:
            state.hasher.add_range(start, end, crc)
            state.done.add(start, end)
        with self._counter_lock:
            self.bytes_done += end - start
        self._request_hash(state)

    def _hash_in_stream(self, state: _File, view: memoryview, position: int) -> None:
        """Hash bytes just written straight from memory when they sit at the hash frontier
        (always true for the first request of a file), sparing a re-read."""
        if not self.options.verify:
            return
        with state.lock:
            if state.hashing or state.hashed != position:
                return
            state.hashing = True
        hashed = position
        try:
            end = position + len(view)
            while hashed < end:
                jumped = self._jump(state, hashed, end)
                if jumped is None:
                    state.hasher.update(view[hashed - position:])
                    hashed = end
                else:
                    hashed = jumped
            self._report_chain(state)
        finally:
            with state.lock:
                state.hashed = hashed
                state.hashing = False
        self._request_hash(state)

    def _jump(self, state: _File, position: int, limit: int) -> int | None:
        """Move the hash past bytes [position, end ≤ limit) that the source checked against
        sha256 chaining values starting from the hash's own (`PeerSource.vouch`); the new
        position, or None."""
        if self._vouch is None:
            return None
        current = state.hasher.chain_state()
        if current is None or current.length != position:
            return None
        found = self._vouch(state.remote.path, current, limit)
        if found is None:
            return None
        end, value, final = found
        if not position < end <= limit:
            return None
        state.hasher.jump(end, value, final=final)
        return end

    def _report_chain(self, state: _File) -> None:
        """Tell a chaining source the sha256 chaining values the hash passed (in order: only
        the thread that holds `state.hashing` calls this)."""
        if self._chained is not None:
            for point in state.hasher.take_checkpoints():
                self._chained(state.remote.path, point.length, point.value, False)

    def _request_hash(self, state: _File) -> None:
        """Have the hash pool catch the file's hash up with its written prefix (and finish the
        file), unless a task for it is already waiting. A download thread that did this itself
        would stop downloading meanwhile: measured ~10% of wall time when the network is the
        bottleneck, since catching up after a chunk completes means hashing whole chunks that
        other threads wrote ahead."""
        assert self._hash_pool is not None
        with state.lock:
            if state.queued or state.finished or state.hashing:
                return  # whoever is hashing re-checks for more work before letting go
            end = state.done.prefix_end()
            if end <= state.hashed and not (end == state.hashed == state.remote.size):
                return  # nothing new to hash, and the file is not complete
            state.queued = True
        future = self._hash_pool.submit(self._hash_task, state)
        with self._hash_futures_lock:
            self._hash_futures.append(future)

    def _hash_task(self, state: _File) -> None:
        with state.lock:
            state.queued = False
        self._advance_hash(state)

    def _take_hash_futures(self) -> set[Future[None]]:
        with self._hash_futures_lock:
            taken, self._hash_futures = set(self._hash_futures), []
        return taken

    def _advance_hash(self, state: _File) -> None:
        """Hash the file's contiguous written prefix from the page cache, if no other thread
        is hashing it, and finish the file once all of it is hashed.

        Whoever holds `state.hashing` re-checks after letting go, so progress recorded by
        others meanwhile is never left behind, and exactly one thread finishes the file.
        """
        while True:
            with state.lock:
                if state.hashing or state.finished:
                    return
                end = state.done.prefix_end()
                size = state.remote.size
                if end > state.hashed:
                    state.hashing = True
                    position = state.hashed
                elif state.hashed == size and end == size:
                    state.finished = True
                    break
                else:
                    return
            hashed = position
            try:
                # Without verification, or with a CRC per range (already computed from memory
                # as the bytes arrived), the "hash" just follows the written prefix.
                if self.options.verify and not state.hasher.combinable:
                    hashed = self._hash_from_disk(state, position, end)
                else:
                    hashed = end
            finally:
                with state.lock:
                    state.hashed = hashed
                    state.hashing = False
                    # Only part of a piece is written (see _hash_from_disk) and nothing more
                    # since: the record of the rest asks again (it sees `hashing` released).
                    stuck = hashed == position and state.done.prefix_end() == end
            if stuck:
                return
        self._finish(state)

    def _hash_from_disk(self, state: _File, position: int, end: int) -> int:
        buffer: memoryview | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(_HASH_READ_SIZE))
        fd = self._open(state)
        every = self._chain_every if self._vouch is not None else 0
        while position < end:
            jumped = self._jump(state, position, end)
            if jumped is not None:
                position = jumped
                self._report_chain(state)
                continue
            # With a source that vouches for pieces, hash whole pieces only, each after looking
            # for a jump: half a piece hashed here would waste the check its bytes came with.
            stop = min(state.remote.size, (position // every + 1) * every) if every else end
            if stop > end:
                break  # the rest of this piece is not written yet: its record asks again
            while position < stop:
                count = os.preadv(fd, [buffer[: min(len(buffer), stop - position)]], position)
                if count == 0:
                    raise IntegrityError(f"staging copy of {state.remote.path!r} is short")
                state.hasher.update(buffer[:count])
                position += count
            self._report_chain(state)
        return position

    def _finish(self, state: _File) -> None:
        chained = state.hasher.chaining
        result = state.hasher.finish(state.remote.path, state.remote.size)
        if chained and self._chained is not None and result.local is not None:
            # The last entry of a chain table: the file's sha256, just checked.
            self._chained(state.remote.path, state.remote.size, bytes.fromhex(result.local.value), True)
        state.hasher = _FINISHED  # its state is no longer needed; 10^4 hashers add up
        fd = state.fd
        assert fd is not None
        if os.fstat(fd).st_size != state.remote.size:
            raise IntegrityError(f"{state.remote.path!r} has the wrong size in staging")
        if self.options.fsync:
            os.fdatasync(fd)
        with state.lock:
            state.fd = None
            state.result = result
        os.close(fd)
        self.staging.record_verified(state.index, result.local, result.provider_checked)
        with self._counter_lock:
            self.files_done += 1

    def _check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise _Cancelled()

    def _close_files(self) -> None:
        for state in self.files:
            with state.lock:
                fd, state.fd = state.fd, None
            if fd is not None:
                os.close(fd)

    # -- 6. unpacking ----------------------------------------------------------------------

    def _unpack(self, kind: str, listing: Listing) -> list[archives.UnpackedFile]:
        self.phase = "unpack"
        self._report()
        shutil.rmtree(self.staging.data, ignore_errors=True)  # a crash may have left a half
        self.staging.data.mkdir()
        if kind == "layers":
            return self._assemble(listing)
        archive_file = self.files[0]
        unpacked = archives.unpack(
            archive_file.target, kind, self.staging.data,
            max_ratio=self.options.max_unpack_ratio, free_bytes=_free_bytes(self.staging.path))
        if not unpacked:
            raise SourceNotFoundError(f"archive {archive_file.remote.path!r} holds no files")
        if self.options.fsync:
            _fsync_files(self.staging.data, (item.path for item in unpacked))
        return unpacked

    def _assemble(self, listing: Listing) -> list[archives.UnpackedFile]:
        """The model from its verified blobs, layer by layer (`fetch/layers.py`)."""
        blobs = {f.remote.path: f for f in self.files}
        hashes = {path: (f.remote.size, f.result.sha256 if f.result else None)
                  for path, f in blobs.items()}
        assembled = oci_layers.assemble(
            listing.layers, lambda blob: blobs[blob].target, hashes, self.staging.data,
            max_ratio=self.options.max_unpack_ratio, free_bytes=_free_bytes(self.staging.path))
        if not assembled:
            raise SourceNotFoundError(f"{self.source_name}: the layers hold no model files")
        if self.options.fsync:
            _fsync_files(self.staging.data, (item.path for item in assembled))
        return assembled

    # -- 6b. sharing through the content store ---------------------------------------------

    def _share(self, manifest: Manifest) -> None:
        """Make each verified file of the model a link to the store's entry for its sha256 (or
        its BLAKE3, the local digest of files whose source names none: `blobs.store_key`),
        entering it when the store has none. An entry is re-hashed before it replaces a file
        fetched afresh (`BlobStore.checked`); links are renamed over the staging file, so a
        crash leaves either the fetched copy or the link, both verified, and the journal still
        true. Nothing here can fail the download: where links fail, the file stays its own."""
        store = self.blobs
        if store is None:
            return
        root = self.staging.data
        spare = self.staging.path / ".link-share"
        for item in manifest.files:
            key = content.store_key(item.sha256, item.local)
            if key is None or item.size < content.MIN_SIZE:
                continue
            algorithm, value = key
            target = root / item.path
            st = os.lstat(target)
            entry = store.lookup(value, item.size, algorithm)
            if entry is not None and entry.inode == (st.st_dev, st.st_ino):
                if entry.inode in self._reused_inodes:
                    self.bytes_shared += item.size
                continue
            if entry is None and store.enter(target, value, algorithm):
                continue
            # The store holds these bytes already (or another download entered them just now):
            # link to them, re-hashed first; if that fails too, try to enter ours once more.
            entry = store.checked(value, item.size, verify=self.options.verify, algorithm=algorithm)
            if entry is not None and store.link_to(entry, target, spare):
                self.bytes_shared += item.size
            elif entry is None:
                store.enter(target, value, algorithm)

    # -- 7. manifest and publishing --------------------------------------------------------

    def _manifest(self, listing: Listing, unpacked: list[archives.UnpackedFile] | None,
                  plan: Mapping[str, object]) -> Manifest:
        entries = tuple(
            ManifestFile(path=f.remote.path, size=f.remote.size, sha256=f.result.sha256,
                         digest=f.remote.digest, digest_checked=f.result.provider_checked,
                         local=None if f.result.sha256 else f.result.local)
            for f in self.files if f.result is not None
        )
        archive_entry = None
        if unpacked is not None:
            archive_entry = entries[0] if not listing.layers else None
            entries = tuple(ManifestFile(path=u.path, size=u.size, sha256=u.sha256)
                            for u in unpacked)
        return Manifest(
            source=self.source_name,
            revision=listing.revision,
            files=entries,
            total_size=sum(entry.size for entry in entries),
            completed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            localmodel_version=__version__,
            archive=archive_entry,
            details={**listing.details, **self._layers_memo(listing, plan)},
        )

    # -- layers already assembled for another model ------------------------------------------

    def _layers_memo(self, listing: Listing, plan: Mapping[str, object]) -> dict[str, str]:
        """For a model built from tar layers (a modelcar), what lets a later download of the same
        layers (another tag, the same digest) skip them (`_from_same_layers`): the layers' key,
        and a probe of their largest blob (64 KiB at a random offset, and its sha256), which
        that download's origin must answer, since the blobs themselves are not kept."""
        if self.blobs is None or not any(layer.kind == "tar" for layer in listing.layers):
            return {}
        blob = max(self.files, key=lambda f: f.remote.size)
        length = min(content.PROBE_SIZE, blob.remote.size)
        offset = secrets.randbelow(blob.remote.size - length + 1)
        fd = os.open(blob.target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            sample = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return {_LAYERS_KEY: _layers_key(plan),
                _LAYERS_PROBE: f"{blob.remote.path}:{offset}:{length}:{hashlib.sha256(sample).hexdigest()}"}

    def _from_same_layers(self, listing: Listing, plan: Mapping[str, object]) -> Manifest | None:
        """The model, without fetching a blob, when another complete model on this node was built
        from exactly these layers (two tags of one modelcar): its files are linked (copied under
        `content.MIN_SIZE`) into staging and re-hashed against its manifest, once this download's
        origin has answered the probe recorded with it. None: fetch as usual."""
        if self.blobs is None or not any(layer.kind == "tar" for layer in listing.layers):
            return None
        key = _layers_key(plan)
        for path in sorted(self.layout.manifest.parent.glob("*.json")):
            if path == self.layout.manifest:
                continue
            try:
                other = Manifest.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if other.details.get(_LAYERS_KEY) != key or not all(f.sha256 for f in other.files):
                continue
            folder = self.layout.dest.parent / path.name[: -len(".json")]
            other_layout = Layout(dest=folder, staging=self.layout.staging, manifest=path)
            if manifests.verify_quick(other_layout, other):
                continue
            if not self._answers(other.details.get(_LAYERS_PROBE, "")):
                return None  # one probe per download: an origin that fails it fetches the layers
            if self._copy_model(folder, other):
                self.bytes_reused = sum(f.size for f in listing.files)
                if self.progress is not None:
                    self.progress(Progress(phase="download", bytes_done=self.bytes_reused,
                                           bytes_total=self.bytes_reused, files_done=len(listing.files),
                                           files_total=len(listing.files), rate=0.0, eta=None,
                                           bytes_reused=self.bytes_reused))
                logger.info("layers already assembled for another model: linked, not fetched", extra={
                    "dest": str(self.layout.dest), "from": str(folder), "bytes": other.total_size})
                return Manifest(
                    source=self.source_name, revision=listing.revision, files=other.files,
                    total_size=other.total_size,
                    completed_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    localmodel_version=__version__,
                    details={**listing.details, _LAYERS_KEY: key, _LAYERS_PROBE: other.details[_LAYERS_PROBE]})
        return None

    def _answers(self, probe: str) -> bool:
        """Whether this download's origin sends the bytes a layers probe recorded."""
        blob, _, rest = probe.partition(":")
        parts = rest.split(":")
        if not blob or len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return False
        offset, length = int(parts[0]), int(parts[1])
        try:
            got = b"".join(bytes(piece) for piece in self.source.read_range(blob, offset, length))
        except (LocalModelError, OSError) as exc:
            logger.info("origin not asked to prove it holds the layers; fetching them", extra={"error": str(exc)})
            return False
        with self._counter_lock:
            self.bytes_probed += len(got)
        return hashlib.sha256(got).hexdigest() == parts[2]

    def _copy_model(self, folder: Path, other: Manifest) -> bool:
        """Fill staging's data/ with `other`'s files from `folder` (links, or copies of small
        files), each re-hashed against `other`'s manifest. False (data/ emptied) on any mismatch
        or failure: the layers are then fetched."""
        data = self.staging.data
        shutil.rmtree(data, ignore_errors=True)  # a crash may have left a half
        data.mkdir()
        known: set[str] = set()
        try:
            for item in other.files:
                source, target = folder / item.path, make_parents(data, item.path, known)
                if item.size >= content.MIN_SIZE:
                    os.link(source, target, follow_symlinks=False)
                    st = os.lstat(target)
                    self._reused_inodes.add((st.st_dev, st.st_ino))
                else:
                    shutil.copyfile(source, target, follow_symlinks=False)
                if file_sha256(target) != item.sha256:
                    raise IntegrityError(f"{item.path} no longer matches its manifest")
        except (OSError, LocalModelError) as exc:
            logger.info("not linked from the model with the same layers; fetching them", extra={"error": str(exc)})
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir()
            return False
        if self.options.fsync:
            _fsync_files(data, (item.path for item in other.files if item.size < content.MIN_SIZE))
        return True

    def _publish(self, manifest: Manifest) -> None:
        layout, staging = self.layout, self.staging
        if self.options.fsync:
            # File data is already synced (see _finish); folders hold the names.
            for folder, _, _ in os.walk(staging.data):
                manifests.fsync_dir(Path(folder))
        manifests.remove_manifest(layout)
        # Once data/ has moved, only this file says the move was a complete, verified publish.
        staging.write_intent(manifest.to_json())
        shutil.rmtree(staging.old, ignore_errors=True)
        staging.old.mkdir()
        if layout.in_place:
            layout.dest.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(layout.dest):
                if entry.name != HIDDEN:
                    os.rename(entry.path, staging.old / entry.name)
            for entry in os.scandir(staging.data):
                os.rename(entry.path, layout.dest / entry.name)
            manifests.fsync_dir(layout.dest)
        else:
            layout.dest.parent.mkdir(parents=True, exist_ok=True)
            if os.path.lexists(layout.dest):
                os.rename(layout.dest, staging.old / "previous")
            os.rename(staging.data, layout.dest)
            manifests.fsync_dir(layout.dest.parent)
        manifests.write_manifest(layout, manifest)
        staging.wipe()

    # -- progress --------------------------------------------------------------------------

    def _report(self, *, phase: str | None = None) -> None:
        if self.progress is None:
            return
        # Layers linked from another model (`_from_same_layers`) leave no file to fetch.
        total = sum(f.remote.size for f in self.files) if self.files else self.bytes_reused
        done = total if phase == "done" else min(self.bytes_done, total)
        rate = self._meter.sample(done)
        self.progress(Progress(
            phase=phase or self.phase, bytes_done=done, bytes_total=total,
            files_done=self.files_done, files_total=len(self.files), rate=rate,
            eta=eta(total - done, rate), bytes_reused=self.bytes_reused))


_FINISHED = NoHasher()
#: Manifest details of a model built from tar layers (`_layers_memo`).
_LAYERS_KEY = "layers"
_LAYERS_PROBE = "layersProbe"


def _layers_key(plan: Mapping[str, object]) -> str:
    """What identifies a model built from layers whatever its URI: its blobs and layers."""
    body = json.dumps({"files": plan.get("files"), "layers": plan.get("layers"), "archive": plan.get("archive")},
                      sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def with_file_limit(settings: Settings, max_files: int) -> Settings:
    """`settings` plus the listing limit every source honours while it lists."""
    return {**settings, MAX_FILES_SETTING: str(max_files)}


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _fsync_files(root: Path, paths: Iterable[str]) -> None:
    for relative in paths:
        fd = os.open(root / relative, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
