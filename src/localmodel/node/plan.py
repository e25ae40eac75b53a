"""One reconcile pass, decided without I/O: what the node wants, what it has, what to do.

The inputs are plain values the agent observed (spec entries, the state of each model folder,
running jobs, what it remembers of earlier attempts) and the current time; the output is a
`Plan`: downloads to start, scrubs to run, jobs to cancel, folders to delete, the
`modelStatus`/`modelDetails` maps, and when to look again.

Rules (KServe's A4–A8 where they exist, and what §9 of the spec asks beyond them):

- Entries are grouped by storage key (sha256(uri)[:16]); entries sharing a key share one folder,
  one download and one phase. A status key listed twice keeps its first entry.
- A model is ModelDownloaded only when its manifest verifies (all files, right sizes); a folder
  that merely exists counts for nothing (KServe trusts any folder).
- A failed download is retried after a backoff (KServe's failed Job never is); until then the
  model shows ModelDownloadError with the reason.
- A key that is no longer wanted is cancelled if it is downloading, then deleted; only names
  shaped like storage keys are ever considered, and a symlink or a file in a wanted model's place
  is reported (PathConflict), never followed or removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from localmodel.api.keys import status_key, storage_key
from localmodel.api.types import LocalModelInfo, ModelDetail, ModelStatus
from localmodel.sources.uris import redact_uri


def rfc3339(moment: datetime | None) -> str | None:
    """Kubernetes' timestamp format (UTC, seconds, trailing Z)."""
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WantedModel:
    """One model folder the spec asks for, and every entry that asks for it."""

    storage_key: str
    uri: str
    entries: tuple[LocalModelInfo, ...]

    @property
    def shown_uri(self) -> str:
        """The URI as logs, Events and status may show it: no user info, no query values
        (a URI may carry a password or a pre-signed signature)."""
        return redact_uri(self.uri)

    @property
    def status_keys(self) -> tuple[str, ...]:
        return tuple(status_key(e.model_name, e.namespace or "") for e in self.entries)

    @property
    def first(self) -> LocalModelInfo:
        """The entry whose credentials and node group the download uses."""
        return self.entries[0]

    @property
    def node_groups(self) -> frozenset[str]:
        return frozenset(e.node_group for e in self.entries if e.node_group)


def wanted_models(entries: Sequence[LocalModelInfo]) -> tuple[dict[str, WantedModel], list[str]]:
    """Group spec entries by storage key, in spec order. Also returns warnings to log."""
    grouped: dict[str, list[LocalModelInfo]] = {}
    seen_status_keys: dict[str, str] = {}
    warnings: list[str] = []
    for entry in entries:
        skey = status_key(entry.model_name, entry.namespace or "")
        if skey in seen_status_keys:
            warnings.append(
                f"status key {skey!r} is listed twice; keeping {redact_uri(seen_status_keys[skey])!r}, "
                f"ignoring {redact_uri(entry.source_model_uri)!r}"
            )
            continue
        seen_status_keys[skey] = entry.source_model_uri
        grouped.setdefault(storage_key(entry.source_model_uri), []).append(entry)
    return (
        {
            key: WantedModel(storage_key=key, uri=items[0].source_model_uri, entries=tuple(items))
            for key, items in grouped.items()
        },
        warnings,
    )


class DiskState(str, Enum):
    """What the folder of one storage key holds."""

    #: Nothing usable: no folder, or a folder without a manifest (partial, foreign, KServe's).
    ABSENT = "Absent"
    #: A manifest whose files are all there with the listed sizes.
    PRESENT = "Present"
    #: A manifest whose files are missing or have the wrong size (or failed the last scrub).
    DAMAGED = "Damaged"
    #: A symlink or a plain file where the folder belongs: never followed, never removed.
    CONFLICT = "Conflict"


@dataclass(frozen=True)
class Observed:
    """The disk view of one storage key."""

    state: DiskState
    uri: str | None = None
    bytes_total: int | None = None
    files_total: int | None = None
    revision: str | None = None
    digest: str | None = None
    completed_at: datetime | None = None
    #: Last time every byte was re-hashed and matched (download or scrub).
    verified_at: datetime | None = None
    problem: str | None = None
    #: (st_dev, st_ino, size) of the files with more than one link (shared through the
    #: content store), and the bytes of the paths that name them: disk use counts each such
    #: file once (`capacity.bytes_on_disk`), however many models or paths hold it.
    linked: frozenset[tuple[int, int, int]] = frozenset()
    linked_bytes: int = 0


ABSENT = Observed(DiskState.ABSENT)


class JobKind(str, Enum):
    DOWNLOAD = "download"
    SCRUB = "scrub"


@dataclass(frozen=True)
class JobView:
    """A job the agent is running for one storage key."""

    kind: JobKind
    #: False while it waits for a free download slot.
    running: bool
    started_at: datetime | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    files_done: int = 0
    files_total: int | None = None
    bytes_per_second: int | None = None
    #: Of bytes_done, those linked from the content store: already on disk, not new.
    bytes_reused: int = 0


@dataclass(frozen=True)
class Record:
    """What the agent remembers of one storage key between passes."""

    failures: int = 0
    reason: str | None = None
    message: str | None = None
    retry_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Bytes per second of the last successful download.
    bytes_per_second: int | None = None
    bytes_total: int | None = None
    #: What the last download went ahead without (credentials.missing), shown in status.
    warning: str | None = None


NO_RECORD = Record()

#: The reason a damaged model shows while it is fetched again.
DAMAGED = "Damaged"


def damaged_record(problem: str | None) -> Record:
    """What is remembered of a model found damaged (by a look at the disk or by a scrub): the
    reason and the finding, nothing of earlier attempts; a successful download replaces it."""
    return Record(reason=DAMAGED, message=problem)


def record_after_observation(record: Record, observed: Observed) -> Record:
    """The Damaged rule, in one place: a DAMAGED observation is remembered as Damaged, with the
    problem found; any other observation leaves the record as it is. `decide` shows a damaged
    model this way, and the agent keeps it (node/memory.py) so the status says why while the
    model downloads again."""
    if observed.state is DiskState.DAMAGED:
        return damaged_record(observed.problem)
    return record


# --- outputs ----------------------------------------------------------------------------------


class Action(str, Enum):
    NONE = "None"
    DOWNLOAD = "Download"
    SCRUB = "Scrub"


@dataclass(frozen=True)
class Decision:
    """The phase and next step of one storage key."""

    phase: ModelStatus
    action: Action
    detail: ModelDetail
    #: When this key needs another look even if nothing changes (retry, scrub).
    wake_at: datetime | None = None


@dataclass(frozen=True)
class Plan:
    decisions: dict[str, Decision]
    downloads: tuple[str, ...]
    scrubs: tuple[str, ...]
    #: Running jobs whose model left the spec.
    cancels: tuple[str, ...]
    #: Storage-key folders (and their manifests and partial data) to delete.
    deletions: tuple[str, ...]
    model_status: dict[str, ModelStatus]
    model_details: dict[str, ModelDetail]
    wake_at: datetime | None


# --- deciding -----------------------------------------------------------------------------------


def _scrub_due(observed: Observed, interval: float | None, baseline: datetime) -> datetime | None:
    if interval is None:
        return None
    last = observed.verified_at or observed.completed_at or baseline
    return last + timedelta(seconds=interval)


def decide(
    model: WantedModel,
    observed: Observed,
    job: JobView | None,
    record: Record,
    now: datetime,
    *,
    scrub_interval: float | None = None,
    scrub_baseline: datetime | None = None,
) -> Decision:
    """The phase and the next step for one wanted model."""
    key = model.storage_key

    # 1. A running download owns the phase; a scrub leaves the model usable (Downloaded).
    if job is not None and job.kind is JobKind.DOWNLOAD:
        return Decision(
            phase=ModelStatus.DOWNLOADING if job.running else ModelStatus.DOWNLOAD_PENDING,
            action=Action.NONE,
            detail=ModelDetail(
                storage_key=key,
                bytes_done=job.bytes_done,
                bytes_total=job.bytes_total,
                files_done=job.files_done,
                files_total=job.files_total,
                bytes_per_second=job.bytes_per_second,
                start_time=rfc3339(job.started_at),
                reason=record.reason,
                message=record.message,
                warning=record.warning,
            ),
        )

    # 2. A verified copy: Downloaded, and maybe due for a full re-hash.
    if observed.state is DiskState.PRESENT and observed.uri in (None, model.uri):
        due = _scrub_due(observed, scrub_interval, scrub_baseline or now)
        scrub_now = job is None and due is not None and due <= now
        return Decision(
            phase=ModelStatus.DOWNLOADED,
            action=Action.SCRUB if scrub_now else Action.NONE,
            detail=ModelDetail(
                storage_key=key,
                bytes_done=observed.bytes_total,
                bytes_total=observed.bytes_total,
                files_done=observed.files_total,
                files_total=observed.files_total,
                bytes_per_second=record.bytes_per_second,
                start_time=rfc3339(record.started_at),
                completion_time=rfc3339(observed.completed_at or record.finished_at),
                revision=observed.revision,
                digest=observed.digest,
                warning=record.warning,
            ),
            wake_at=None if scrub_now or job is not None else due,
        )

    # 3. Something that is not ours sits where the folder belongs: report, never touch.
    if observed.state is DiskState.CONFLICT:
        return Decision(
            phase=ModelStatus.DOWNLOAD_ERROR,
            action=Action.NONE,
            detail=ModelDetail(
                storage_key=key,
                reason="PathConflict",
                message=observed.problem or "the model folder is not a plain folder",
            ),
        )

    # 4. The last attempt failed and its backoff has not run out.
    if record.retry_at is not None and record.retry_at > now:
        return Decision(
            phase=ModelStatus.DOWNLOAD_ERROR,
            action=Action.NONE,
            detail=ModelDetail(
                storage_key=key,
                bytes_total=record.bytes_total,
                start_time=rfc3339(record.started_at),
                retry_at=rfc3339(record.retry_at),
                reason=record.reason,
                message=record.message,
                warning=record.warning,
            ),
            wake_at=record.retry_at,
        )

    # 5. Missing, damaged, or a copy of another URI (a storage-key collision): download.
    shown = record_after_observation(record, observed)
    return Decision(
        phase=ModelStatus.DOWNLOAD_PENDING,
        action=Action.DOWNLOAD,
        detail=ModelDetail(
            storage_key=key,
            bytes_total=observed.bytes_total or record.bytes_total,
            reason=shown.reason,
            message=shown.message or record.message,
            warning=record.warning,
        ),
    )


def plan(
    wanted: Mapping[str, WantedModel],
    *,
    on_disk: Sequence[str],
    observed: Mapping[str, Observed],
    jobs: Mapping[str, JobView],
    records: Mapping[str, Record],
    now: datetime,
    scrub_interval: float | None = None,
    scrub_baseline: datetime | None = None,
) -> Plan:
    """Decide every key: wanted ones get a phase and maybe an action; the rest go away.

    `on_disk` lists the storage keys that have anything on disk (folder, manifest or partial
    data); only those can be deleted.
    """
    decisions: dict[str, Decision] = {}
    model_status: dict[str, ModelStatus] = {}
    model_details: dict[str, ModelDetail] = {}
    for key, model in wanted.items():
        decision = decide(
            model,
            observed.get(key, ABSENT),
            jobs.get(key),
            records.get(key, NO_RECORD),
            now,
            scrub_interval=scrub_interval,
            scrub_baseline=scrub_baseline,
        )
        decisions[key] = decision
        for skey in model.status_keys:
            model_status[skey] = decision.phase
            model_details[skey] = decision.detail

    cancels = tuple(sorted(key for key in jobs if key not in wanted))
    deletions = tuple(sorted(key for key in set(on_disk) if key not in wanted and key not in jobs))
    wakes = [d.wake_at for d in decisions.values() if d.wake_at is not None]
    return Plan(
        decisions=decisions,
        downloads=tuple(k for k, d in decisions.items() if d.action is Action.DOWNLOAD),
        scrubs=tuple(k for k, d in decisions.items() if d.action is Action.SCRUB),
        cancels=cancels,
        deletions=deletions,
        model_status=model_status,
        model_details=model_details,
        wake_at=min(wakes) if wakes else None,
    )
