"""Downloads and scrubs running in threads inside the agent, one job per storage key.

KServe starts a Job per model; the agent runs the engine in-process instead, `max_concurrent`
downloads at a time (the others wait as ModelDownloadPending) plus one scrub thread, so a scrub
never takes a download slot and downloads never starve scrubs.

A download job:
1. writes file-type credentials (GCS keys) into a private temp folder (0700/0600), removed after;
2. lists the model and checks capacity under the pool lock, so two downloads starting together
   cannot both take the last free gigabytes (`capacity.check_capacity`);
3. runs the engine, which resumes from staging and publishes atomically with a manifest.

Cancelling (model left the spec, SIGTERM) sets the job's event; the engine stops at the next
chunk and keeps its staging data, so a later download resumes. Every message that leaves a
job is passed through `credentials.redact` first.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from localmodel.errors import (
    InsufficientSpaceError,
    LocalModelError,
    SourceAuthError,
    SourceNotFoundError,
)
from localmodel.fetch.blobs import MIN_SIZE
from localmodel.fetch.engine import with_file_limit
from localmodel.fetch.manifest import Manifest
from localmodel.fetch.options import FetchOptions
from localmodel.fetch.progress import Progress
from localmodel.node.capacity import Budgets, CapacityRequest, check_capacity
from localmodel.node.credentials import Credentials, redact
from localmodel.node.plan import JobKind, JobView
from localmodel.node.store import ModelStore
from localmodel.sources.base import ListedOnce, Listing
from localmodel.sources.registry import open_source

if TYPE_CHECKING:
    from localmodel.peers.fill import FillStrategy

#: The oci:// source's setting for registries allowed over plain HTTP (sources/oci.py).
OCI_INSECURE_SETTING = "LOCALMODEL_OCI_INSECURE_REGISTRIES"

logger = logging.getLogger(__name__)

#: Failure reasons an origin gives when it wants credentials (private objects answer 404 on
#: several stores, e.g. Hugging Face, so NotFound counts too).
_REFUSALS = frozenset({SourceAuthError.reason, SourceNotFoundError.reason})


class Cancelled(Exception):
    """The job was asked to stop."""


@dataclass(frozen=True)
class DownloadRequest:
    key: str
    uri: str
    credentials: Credentials
    budgets: Budgets = field(default_factory=Budgets)


@dataclass(frozen=True)
class JobResult:
    """How a job ended."""

    key: str
    kind: JobKind
    ok: bool
    started_at: datetime
    finished_at: datetime
    cancelled: bool = False
    reason: str | None = None
    message: str | None = None
    retry_after: float | None = None
    #: Download: what was published.
    bytes_total: int | None = None
    files_total: int | None = None
    revision: str | None = None
    bytes_fetched: int = 0
    #: Download: bytes linked from the content store (files other models hold), not fetched.
    bytes_reused: int = 0
    #: Download: the folder was already there (KServe's) and was adopted, nothing fetched.
    adopted: bool = False
    #: Scrub: problems found.
    problems: tuple[str, ...] = ()
    #: Scrub: (st_dev, st_ino) of damaged files shared with other models (content store links).
    damaged_inodes: frozenset[tuple[int, int]] = frozenset()

    @property
    def seconds(self) -> float:
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass
class _Job:
    kind: JobKind
    request: DownloadRequest | None
    cancel: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    started_at: datetime | None = None
    progress: Progress | None = None
    groups: frozenset[str] = frozenset()
    model_bytes: int = 0
    need_bytes: int = 0
    future: Future[JobResult] | None = None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def describe_error(exc: BaseException) -> tuple[str, str, float | None]:
    """(reason, message, retry_after) for any exception a job can raise."""
    if isinstance(exc, LocalModelError):
        return exc.reason, str(exc) or exc.__class__.__name__, getattr(exc, "retry_after", None)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return InsufficientSpaceError.reason, f"no space left on the models filesystem: {exc}", None
    if isinstance(exc, OSError):
        return "DiskError", f"{exc.__class__.__name__}: {exc}", None
    return "InternalError", f"{exc.__class__.__name__}: {exc}", None


class Jobs:
    """The pool. `on_change` is called (from any thread) when a job starts or ends."""

    def __init__(
        self,
        store: ModelStore,
        *,
        max_concurrent: int,
        options: FetchOptions,
        temp_dir: Path | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_bytes: Callable[[int], None] = lambda count: None,
        fill: FillStrategy | None = None,
        insecure_registries: tuple[str, ...] = (),
    ) -> None:
        self._store = store
        #: Handed to every download as the oci:// source's setting (the agent's flag).
        self._insecure_registries = ",".join(insecure_registries)
        #: Peer-to-peer policy (None: every download reads its origin, as KServe's agent does).
        self._fill = fill
        self._options = options
        self._temp_dir = temp_dir
        self._on_change = on_change
        self._on_bytes = on_bytes
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._results: list[JobResult] = []
        self._downloads = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="download")
        self._scrubs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrub")
        self._closed = False

    # --- reconciler side ------------------------------------------------------------------

    def submit_download(self, request: DownloadRequest, groups: frozenset[str]) -> bool:
        with self._lock:
            if self._closed or request.key in self._jobs:
                return False
            job = _Job(JobKind.DOWNLOAD, request, groups=groups)
            self._jobs[request.key] = job
            job.future = self._downloads.submit(self._run_download, job)
        return True

    def submit_scrub(self, key: str) -> bool:
        with self._lock:
            if self._closed or key in self._jobs:
                return False
            job = _Job(JobKind.SCRUB, None)
            self._jobs[key] = job
            job.future = self._scrubs.submit(self._run_scrub, key, job)
        return True

    def cancel(self, key: str) -> None:
        with self._lock:
            job = self._jobs.get(key)
        if job is not None:
            job.cancel.set()

    def views(self) -> dict[str, JobView]:
        with self._lock:
            return {key: self._view(job) for key, job in self._jobs.items()}

    def has_running_downloads(self) -> bool:
        with self._lock:
            return any(j.kind is JobKind.DOWNLOAD for j in self._jobs.values())

    def take_results(self) -> list[JobResult]:
        with self._lock:
            results, self._results = self._results, []
        return results

    def shutdown(self, timeout: float) -> None:
        """Cancel everything and wait up to `timeout` seconds for threads to stop."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.future is not None:
                try:
                    job.future.result(timeout=max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - outcome already recorded by the job
                    pass
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._scrubs.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _view(job: _Job) -> JobView:
        progress = job.progress
        return JobView(
            kind=job.kind,
            running=job.running,
            started_at=job.started_at,
            bytes_done=progress.bytes_done if progress else 0,
            bytes_total=progress.bytes_total if progress else (job.model_bytes or None),
            files_done=progress.files_done if progress else 0,
            files_total=progress.files_total if progress else None,
            bytes_per_second=int(progress.rate) if progress else None,
            bytes_reused=progress.bytes_reused if progress else 0,
        )

    # --- worker side --------------------------------------------------------------------------

    def _finish(self, key: str, result: JobResult) -> JobResult:
        with self._lock:
            self._jobs.pop(key, None)
            self._results.append(result)
        self._on_change()
        return result

    def _start(self, job: _Job) -> datetime:
        started = _now()
        with self._lock:
            job.running = True
            job.started_at = started
        self._on_change()
        return started

    def _reserve(self, key: str, job: _Job, listing: Listing, budgets: Budgets) -> None:
        """Check every budget and book this download's bytes, atomically across jobs. Files
        the content store holds (a listed sha256, fetch/blobs.py) will be links, not writes:
        they need no free space, and none of a group's limit where its models hold them."""
        model_bytes = sum(f.size for f in listing.files)
        reusable = self._store.reusable(
            [(f.digest.value.lower(), f.size) for f in listing.files
             if f.digest is not None and f.digest.algorithm.lower() == "sha256" and f.size >= MIN_SIZE]
        ) if self._options.dedup and self._options.verify else {}
        present = self._store.partial_bytes(key) + sum(size for _, _, size in reusable.values())
        usage = self._store.usage()
        with self._lock:
            others = [j for k, j in self._jobs.items() if k != key and j.kind is JobKind.DOWNLOAD and j.need_bytes]
            reserved = sum(max(0, j.need_bytes - (j.progress.bytes_done if j.progress else 0)) for j in others)
            groups: list[str | None] = [*sorted(job.groups)] or [None]
            for group in groups:
                limit = budgets.group_limits.get(group) if group else None
                used = budgets.group_present_bytes.get(group, 0) if group else 0
                used += sum(j.model_bytes for j in others if group in j.groups)
                held = budgets.group_linked.get(group, frozenset()) if group else frozenset()
                shared = sum(size for dev, ino, size in reusable.values() if (dev, ino) in held)
                check_capacity(
                    CapacityRequest(
                        model_bytes=model_bytes,
                        present_bytes=present,
                        free_bytes=usage.free_bytes,
                        reserved_bytes=reserved,
                        keep_free_bytes=budgets.keep_free_bytes,
                        declared_bytes=budgets.declared_bytes,
                        group=group,
                        group_limit_bytes=limit,
                        group_used_bytes=used,
                        group_shared_bytes=shared,
                    )
                )
            job.model_bytes = model_bytes
            job.need_bytes = max(0, model_bytes - present)

    def _materialize(self, credentials: Credentials) -> tuple[dict[str, str], str | None]:
        """Settings with file credentials written to a private folder (returned for removal)."""
        settings = dict(credentials.settings)
        if self._insecure_registries:
            settings[OCI_INSECURE_SETTING] = self._insecure_registries
        if not credentials.files:
            return settings, None
        folder = tempfile.mkdtemp(prefix="localmodel-cred-", dir=self._temp_dir)  # mode 0700
        for index, (name, content) in enumerate(sorted(credentials.files.items())):
            path = os.path.join(folder, f"credential-{index}.json")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
            settings[name] = path
        return settings, folder

    def _run_download(self, job: _Job) -> JobResult:
        request = job.request
        assert request is not None
        key = request.key
        secrets = request.credentials.secret_values
        started = self._start(job)
        fetched = 0
        folder: str | None = None

        def on_progress(progress: Progress) -> None:
            nonlocal fetched
            if job.cancel.is_set():
                raise Cancelled()
            # The first report starts from what staging already held (a resume): not fetched now.
            delta = 0 if job.progress is None else max(0, progress.bytes_done - job.progress.bytes_done)
            fetched += delta
            if delta:
                self._on_bytes(delta)
            with self._lock:
                job.progress = progress

        def on_verify(progress: Progress) -> None:
            # hashing what is on disk: progress to show, but no bytes fetched
            if job.cancel.is_set():
                raise Cancelled()
            with self._lock:
                job.progress = progress

        try:
            if job.cancel.is_set():
                raise Cancelled()
            settings, folder = self._materialize(request.credentials)
            # One origin and one listing for every step below (adoption, budgets, peers, the
            # engine). Listings stop at the file limit, as the engine's own would.
            origin = ListedOnce(open_source(request.uri, with_file_limit(settings, self._options.max_files)))
            try:
                manifest = None
                if self._options.adopt and not self._options.force:
                    # before any budget: an adopted model already has its space
                    manifest = self._store.adopt(key, request.uri, settings=settings, options=self._options,
                                                 progress=on_verify, source_factory=origin.open)
                adopted = manifest is not None
                if manifest is None:
                    self._reserve(key, job, origin.list_files(), request.budgets)
                    if self._fill is None:
                        manifest = self._store.download(
                            key, request.uri, settings=settings, options=self._options,
                            progress=on_progress, source_factory=origin.open,
                        )
                    else:
                        manifest = self._download_with_peers(key, request.uri, settings, job, on_progress,
                                                             origin)
            finally:
                origin.release()
        except BaseException as exc:  # noqa: BLE001 - every outcome becomes a result
            cancelled = isinstance(exc, Cancelled) or job.cancel.is_set()
            reason, message, retry_after = describe_error(exc)
            if request.credentials.missing and reason in _REFUSALS:
                # The origin refused a download that went ahead without the credentials asked
                # for: name what is missing, the likely cause.
                message = f"{message} ({request.credentials.missing})"
            if not cancelled and not isinstance(exc, LocalModelError):
                logger.exception("download crashed", extra={"storage_key": key})
            result = JobResult(
                key=key, kind=JobKind.DOWNLOAD, ok=False, cancelled=cancelled,
                started_at=started, finished_at=_now(),
                reason="Cancelled" if cancelled else reason,
                message=redact(message, secrets), retry_after=retry_after, bytes_fetched=fetched,
            )
            if not isinstance(exc, Exception):
                self._finish(key, result)
                raise
            return self._finish(key, result)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        return self._finish(
            key,
            JobResult(
                key=key, kind=JobKind.DOWNLOAD, ok=True, started_at=started,
                finished_at=_now(),
                bytes_total=manifest.total_size, files_total=len(manifest.files),
                revision=manifest.revision, bytes_fetched=fetched,
                bytes_reused=job.progress.bytes_reused if job.progress and not adopted else 0,
                adopted=adopted,
            ),
        )

    def _download_with_peers(self, key: str, uri: str, settings: dict[str, str], job: _Job,
                             on_progress: Callable[[Progress], None], origin: ListedOnce) -> Manifest:
        """The download under the peer-to-peer policy, which may first wait for a peer or a
        free origin slot (cancellable). Peers caught lying are quarantined by the policy, and
        the download is tried again at once without them (once), not after the backoff."""
        from localmodel.peers.fill import PeerDataRejectedError

        assert self._fill is not None
        for attempt in (1, 2):
            try:
                with self._fill.session(key, uri, settings, job.cancel, open_origin=origin.open) as source_factory:
                    return self._store.download(key, uri, settings=settings, options=self._options,
                                                progress=on_progress, source_factory=source_factory or origin.open)
            except PeerDataRejectedError as exc:
                if attempt == 2:
                    raise
                logger.warning("download again without the quarantined peers",
                               extra={"storage_key": key, "error": str(exc)})
        raise AssertionError("unreachable")

    def _run_scrub(self, key: str, job: _Job) -> JobResult:
        started = self._start(job)
        try:
            problems, damaged_inodes = self._store.scrub_shared(key)
        except Exception as exc:  # noqa: BLE001
            reason, message, _ = describe_error(exc)
            return self._finish(key, JobResult(key=key, kind=JobKind.SCRUB, ok=False, started_at=started,
                                               finished_at=_now(), reason=reason, message=message))
        return self._finish(
            key,
            JobResult(key=key, kind=JobKind.SCRUB, ok=not problems, started_at=started, finished_at=_now(),
                      problems=tuple(problems), reason=None if not problems else "Damaged",
                      damaged_inodes=damaged_inodes),
        )
