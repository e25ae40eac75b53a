"""What the agent remembers between reconcile passes, as one immutable value.

The Reconciler (node/reconcile.py) holds the I/O edges (backend, store, jobs, metrics, clock) and
one `AgentMemory`. Every pass reads the value and replaces it with the one a step below returns;
no step changes a value in place, so a pass can hand the current memory to a worker thread, a
test can keep the memory of pass N beside that of pass N+1, and what the agent knows is in one
place. The steps are pure: they take what the edges observed and return the next memory
(sometimes with what to say about it); deciding what to do is `plan.plan`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from localmodel.node.backend import AgentEvent, Desired
from localmodel.node.plan import (
    NO_RECORD,
    DiskState,
    Observed,
    Plan,
    Record,
    WantedModel,
    damaged_record,
    record_after_observation,
)

if TYPE_CHECKING:
    from localmodel.node.downloads import JobResult

_K = TypeVar("_K")
_V = TypeVar("_V")


def _frozen(mapping: Mapping[_K, _V]) -> Mapping[_K, _V]:
    """A read-only copy: a remembered map is never changed in place, only replaced."""
    return MappingProxyType(dict(mapping))


def _with(mapping: Mapping[_K, _V], key: _K, value: _V) -> dict[_K, _V]:
    copy = dict(mapping)
    copy[key] = value
    return copy


def _without(mapping: Mapping[_K, _V], key: _K) -> dict[_K, _V]:
    copy = dict(mapping)
    copy.pop(key, None)
    return copy


_MAPPINGS = ("wanted", "records", "observed", "scrubbed", "progress_logged")


@dataclass(frozen=True)
class AgentMemory:
    """Everything one pass leaves for the next. Replace it; never change it."""

    #: The LocalModelNode's wishes as last loaded (None: there is none; downloads paused).
    desired: Desired | None = None
    #: The wishes grouped by storage key (plan.wanted_models).
    wanted: Mapping[str, WantedModel] = field(default_factory=dict)
    #: The status as the API server stores it (what a merge patch is computed against).
    server_status: Mapping[str, Any] | None = None
    #: Per storage key: the last attempt's outcome, failures and backoff, credential warning.
    records: Mapping[str, Record] = field(default_factory=dict)
    #: Per wanted storage key not being downloaded: the disk as the last full pass saw it.
    observed: Mapping[str, Observed] = field(default_factory=dict)
    #: Storage keys with anything on disk (only those can be deleted).
    on_disk: frozenset[str] = frozenset()
    #: When each key was last verified byte for byte by this agent (download or scrub).
    scrubbed: Mapping[str, datetime] = field(default_factory=dict)
    #: Downloads whose DownloadStarted Event was sent.
    announced: frozenset[str] = frozenset()
    #: When each running download last logged its progress.
    progress_logged: Mapping[str, datetime] = field(default_factory=dict)
    #: Events decided while observing, sent in the act step of the same pass.
    pending_events: tuple[AgentEvent, ...] = ()
    #: Alias refusals already logged (each is logged once while it lasts).
    alias_refusals_shown: frozenset[str] = frozenset()
    last_write: datetime | None = None
    #: When a held-back progress write is due (status.write_due).
    status_wake: datetime | None = None
    #: When a status write last showed the CRD pruning localmodel's additive status fields
    #: (KServe's CRDs are installed); None: they are kept.
    pruned_seen_at: datetime | None = None
    #: A pass has reached the status step.
    synced: bool = False
    last_pass_at: datetime | None = None
    last_plan: Plan | None = None

    def __post_init__(self) -> None:
        for name in _MAPPINGS:
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.server_status is not None:
            object.__setattr__(self, "server_status", _frozen(self.server_status))

    def record(self, key: str) -> Record:
        return self.records.get(key, NO_RECORD)

    def shown_uri(self, key: str) -> str:
        model = self.wanted.get(key)
        return model.shown_uri if model else key

    def status_keys(self, key: str) -> tuple[str, ...]:
        model = self.wanted.get(key)
        return model.status_keys if model else ()

    # --- step 1: the wishes ---------------------------------------------------------------------

    def loaded(self, desired: Desired, wanted: Mapping[str, WantedModel], at: datetime) -> AgentMemory:
        status = dict(desired.status) if desired.status is not None else self.server_status
        return replace(self, desired=desired, wanted=wanted, server_status=status, last_pass_at=at)

    def paused(self, at: datetime) -> AgentMemory:
        """No LocalModelNode: nothing is wanted (records and files are kept)."""
        return replace(self, desired=None, wanted={}, last_pass_at=at, synced=True)

    # --- step 2: jobs that ended ------------------------------------------------------------------

    def job_ended(self, key: str) -> AgentMemory:
        return replace(self, announced=self.announced - {key},
                       progress_logged=_without(self.progress_logged, key))

    def downloaded(self, result: JobResult) -> AgentMemory:
        """A download (or an adoption) succeeded: the record says so, failures are forgotten."""
        seconds = result.seconds
        rate = int(result.bytes_fetched / seconds) if seconds > 0 and result.bytes_fetched else None
        record = Record(started_at=result.started_at, finished_at=result.finished_at,
                        bytes_per_second=rate, bytes_total=result.bytes_total,
                        warning=self.record(result.key).warning)
        return replace(self, records=_with(self.records, result.key, record),
                       scrubbed=_with(self.scrubbed, result.key, result.finished_at))

    def scrub_intact(self, key: str, at: datetime) -> AgentMemory:
        return replace(self, scrubbed=_with(self.scrubbed, key, at))

    def scrub_damaged(self, key: str, summary: str) -> AgentMemory:
        return replace(self, records=_with(self.records, key, damaged_record(f"scrub: {summary}")))

    def failed(self, key: str, reason: str, message: str, *, retry_at: datetime,
               started_at: datetime | None = None) -> AgentMemory:
        """One more failed attempt; `retry_at` is when the backoff runs out."""
        previous = self.record(key)
        record = Record(failures=previous.failures + 1, reason=reason, message=message, retry_at=retry_at,
                        started_at=started_at or previous.started_at, bytes_total=previous.bytes_total,
                        warning=previous.warning)
        return replace(self, records=_with(self.records, key, record))

    # --- step 3: the disk -------------------------------------------------------------------------

    def aliases_refused(self, refused: Iterable[str]) -> tuple[AgentMemory, list[str]]:
        """Returns the refusals not logged yet; one that ends is logged again if it comes back."""
        now_refused = frozenset(refused)
        return replace(self, alias_refusals_shown=now_refused), sorted(now_refused - self.alias_refusals_shown)

    def disk_seen(self, observed: Mapping[str, Observed], on_disk: Iterable[str]) -> AgentMemory:
        """A full look at the disk. A damaged model is remembered as Damaged (plan's rule) while it
        is fetched again, so the status says why; a model that was present and is now damaged
        also gets a ModelDamaged Event, sent in this pass's act step."""
        records = dict(self.records)
        events = list(self.pending_events)
        for key, seen in observed.items():
            if seen.state is not DiskState.DAMAGED:
                continue
            records[key] = record_after_observation(records.get(key, NO_RECORD), seen)
            before = self.observed.get(key)
            if before is not None and before.state is DiskState.PRESENT:
                events.append(AgentEvent("Warning", "ModelDamaged", f"{seen.problem}; downloading again",
                                         self.status_keys(key)))
        return replace(self, observed=observed, on_disk=frozenset(on_disk), records=records,
                       pending_events=tuple(events))

    def scrubbed_at(self, key: str, persisted: datetime | None) -> datetime | None:
        return max(filter(None, (persisted, self.scrubbed.get(key))), default=None)

    # --- step 4 and 5: plan and act ---------------------------------------------------------------

    def planned(self, current: Plan) -> AgentMemory:
        return replace(self, last_plan=current)

    def take_pending_events(self) -> tuple[AgentMemory, tuple[AgentEvent, ...]]:
        return replace(self, pending_events=()), self.pending_events

    def deleted(self, key: str) -> AgentMemory:
        """The folder of a model no longer wanted is gone: so is what was known of it."""
        return replace(self, records=_without(self.records, key), scrubbed=_without(self.scrubbed, key))

    def download_queued(self, key: str, missing_credentials: str | None) -> AgentMemory:
        """The warning the status shows for this download (None clears an old one)."""
        previous = self.record(key)
        if previous.warning == missing_credentials:
            return self
        return replace(self, records=_with(self.records, key, replace(previous, warning=missing_credentials)))

    def started_announced(self, key: str) -> AgentMemory:
        return replace(self, announced=self.announced | {key})

    def progress_logged_at(self, key: str, at: datetime) -> AgentMemory:
        return replace(self, progress_logged=_with(self.progress_logged, key, at))

    # --- step 6: status ---------------------------------------------------------------------------

    def status_held(self, wake: datetime | None) -> AgentMemory:
        return replace(self, status_wake=wake)

    @property
    def additive_pruned(self) -> bool:
        return self.pruned_seen_at is not None

    def status_written(self, at: datetime, stored: Mapping[str, Any], *,
                       pruned_seen_at: datetime | None) -> AgentMemory:
        return replace(self, last_write=at, server_status=stored, pruned_seen_at=pruned_seen_at,
                       status_wake=None)

    def synced_now(self) -> AgentMemory:
        return self if self.synced else replace(self, synced=True)
