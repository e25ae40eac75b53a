"""One level-triggered reconcile pass: read the wishes, look at the disk, plan, act, report.

A full pass runs on every change of the LocalModelNode, whenever a job starts or ends, and every
`reconcilationFrequencyInSecs`; it never depends on which event woke it (KServe's A3 order):

1. load the wishes (absent LocalModelNode → stop downloads, keep every file);
2. take the outcomes of jobs that ended (records, Events, metrics);
3. observe the disk: every storage key present, every wanted model checked against its manifest;
4. plan (pure, `plan.plan`);
5. act: cancel unwanted jobs, delete unwanted folders, start downloads and scrubs;
6. publish the status, by merge patch, only when it changed.

Between full passes, while downloads run, a progress pass repeats steps 4 and 6 from the cached
observations so bytes and rate move in status without rescanning the disk.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from localmodel.api.quantity import human_bytes
from localmodel.api.types import NodeDisk
from localmodel.errors import LocalModelError
from localmodel.node.aliases import plan_aliases, sync_aliases
from localmodel.node.backend import AgentEvent, Backend
from localmodel.node.capacity import bytes_on_disk
from localmodel.node.credentials import Credentials
from localmodel.node.downloads import (
    DownloadRequest,
    JobResult,
    Jobs,
    describe_error,
)
from localmodel.node.hostpath import HostRoot, check_group_paths
from localmodel.node.memory import AgentMemory
from localmodel.node.metrics import AgentMetrics
from localmodel.node.plan import (
    ABSENT,
    DiskState,
    JobKind,
    Observed,
    Plan,
    WantedModel,
    plan,
    wanted_models,
)
from localmodel.node.policy import check_source_allowed
from localmodel.node.retry import backoff_seconds
from localmodel.node.settings import AgentSettings
from localmodel.node.status import (
    additive_fields_pruned,
    build_status,
    coarse_free_bytes,
    prune_recheck_due,
    status_patch,
    write_due,
)
from localmodel.node.store import ModelStore

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def apply_merge_patch(target: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 apply: what the server stores after `patch` (used when it does not say)."""
    result = dict(target or {})
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            before = result.get(key)
            result[key] = apply_merge_patch(before if isinstance(before, Mapping) else {}, value)
        else:
            result[key] = value
    return result


class Reconciler:
    """The passes, over the I/O edges (backend, store, jobs, metrics, clock). What the agent
    remembers between passes is `memory`, one immutable value that each step replaces."""

    def __init__(
        self,
        settings: AgentSettings,
        backend: Backend,
        store: ModelStore,
        jobs: Jobs,
        metrics: AgentMetrics,
        *,
        clock: Callable[[], datetime] = utcnow,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.jobs = jobs
        self.metrics = metrics
        self._clock = clock
        self._draw = draw
        #: The baseline of scrub intervals for models with no verification time.
        self.started_at = clock()
        self.memory = AgentMemory()
        #: Where this agent serves peers (status.peerEndpoint); None publishes nothing.
        self.peer_endpoint: str | None = None
        #: Where --root is on the node (node/hostpath.py); None: not known, nothing checked.
        self.host_root: HostRoot | None = None

    @property
    def resync_seconds(self) -> float:
        desired = self.memory.desired
        return desired.resync_seconds if desired else self.settings.resync_seconds

    @property
    def synced(self) -> bool:
        """A pass has reached the status step."""
        return self.memory.synced

    @property
    def additive_pruned(self) -> bool:
        return self.memory.additive_pruned

    @property
    def last_plan(self) -> Plan | None:
        return self.memory.last_plan

    @property
    def last_pass_at(self) -> datetime | None:
        return self.memory.last_pass_at

    # --- passes -----------------------------------------------------------------------------

    async def full_pass(self) -> datetime | None:
        """Steps 1-6. Returns when the next pass is due at the latest (None = at resync)."""
        # 1. Load the wishes.
        desired = await self.backend.load()
        loaded_at = self._clock()
        if desired is None:
            self._pause(loaded_at)
            return None
        for warning in desired.warnings:
            logger.warning(warning)
        wanted, warnings = wanted_models(desired.entries)
        self.memory = self.memory.loaded(desired, wanted, loaded_at)
        for warning in warnings:
            logger.warning(warning)

        # 2. Outcomes of jobs that ended.
        await self._absorb(self.jobs.take_results())

        # 3. Observe the disk.
        refused, observed, on_disk = await asyncio.to_thread(self._observe_disk, self.memory)
        self.memory, _ = self.memory.aliases_refused(refused)
        self.memory = self.memory.disk_seen(observed, on_disk)

        # 4. Plan.
        current = self._plan()

        # 5. Act.
        await self._act(current)

        # 6. Publish.
        await self._announce_started()
        await self._publish(self._plan())
        self.memory = self.memory.synced_now()
        return self._next_wake(current)

    async def progress_pass(self) -> datetime | None:
        """Steps 4 and 6 from cached observations, for moving progress."""
        if self.memory.desired is None:
            return None
        await self._announce_started()
        self._log_progress()
        current = self._plan()
        await self._publish(current)
        return self._next_wake(current)

    def _next_wake(self, current: Plan) -> datetime | None:
        wakes = [w for w in (current.wake_at, self.memory.status_wake) if w is not None]
        return min(wakes) if wakes else None

    def _pause(self, at: datetime) -> None:
        """No LocalModelNode: stop downloads (partial data kept), touch no file (KServe's A3)."""
        if self.memory.desired is not None:
            logger.info("LocalModelNode is gone; pausing downloads and keeping every file")
        for key in self.jobs.views():
            self.jobs.cancel(key)
        self.memory = self.memory.paused(at)

    # --- step 2 -------------------------------------------------------------------------------

    async def _absorb(self, results: list[JobResult]) -> None:
        for result in results:
            announced = result.key in self.memory.announced
            self.memory = self.memory.job_ended(result.key)
            if result.kind is JobKind.DOWNLOAD and not result.cancelled and not announced and not result.adopted:
                # Started and ended between two passes: still tell the whole story, in order.
                # (An adopted folder downloaded nothing: its Adopted Event is the story.)
                await self._event_started(result.key)
            if result.kind is JobKind.SCRUB:
                await self._absorb_scrub(result)
            elif result.ok:
                await self._absorb_success(result)
            elif result.cancelled:
                self.metrics.downloads.labels("cancelled").inc()
                logger.info("download stopped", extra={"storage_key": result.key})
            else:
                await self._fail(result.key, result.reason or "Error", result.message or "",
                                 retry_after=result.retry_after, started_at=result.started_at)

    async def _absorb_success(self, result: JobResult) -> None:
        self.memory = self.memory.downloaded(result)
        seconds = result.seconds
        rate = self.memory.record(result.key).bytes_per_second
        uri = self.memory.shown_uri(result.key)
        files = f"{result.files_total} file" + ("" if result.files_total == 1 else "s")
        if result.adopted:
            self.metrics.adoptions.inc()
            await self._event("Normal", "Adopted",
                              f"kept {uri} already on disk without a manifest ({human_bytes(result.bytes_total or 0)}, "
                              f"{files}): every file matched the source listing, hashed in {seconds:.1f}s; nothing downloaded",
                              result.key)
            return
        self.metrics.downloads.labels("succeeded").inc()
        self.metrics.duration.observe(seconds)
        self.metrics.reused_bytes.inc(result.bytes_reused)
        speed = f" at {human_bytes(rate)}/s" if rate else ""
        revision = f", revision {result.revision}" if result.revision else ""
        shared = (f"; {human_bytes(result.bytes_reused)} of it already on this node (shared with other "
                  "models, not fetched)" if result.bytes_reused else "")
        message = (
            f"downloaded {uri} ({human_bytes(result.bytes_total or 0)}, {files}) "
            f"in {seconds:.1f}s{speed}{revision}; content verified{shared}"
        )
        await self._event("Normal", "Downloaded", message, result.key)

    async def _absorb_scrub(self, result: JobResult) -> None:
        if result.ok:
            self.metrics.scrubs.labels("intact").inc()
            self.memory = self.memory.scrub_intact(result.key, result.finished_at)
            await asyncio.to_thread(self.store.record_scrub, result.key, result.finished_at)
            logger.info("scrub found the model intact", extra={"storage_key": result.key})
            return
        if result.problems:
            self.metrics.scrubs.labels("damaged").inc()
            summary = "; ".join(result.problems[:3])
            # Withdraw the manifest: the folder no longer proves anything, so it is fetched again.
            await asyncio.to_thread(self.store.withdraw, result.key)
            self.memory = self.memory.scrub_damaged(result.key, summary)
            await self._event("Warning", "ModelDamaged", f"scrub found damage, downloading again: {summary}",
                              result.key)
            await self._withdraw_sharers(result.key, result.damaged_inodes)
            return
        self.metrics.scrubs.labels("failed").inc()
        logger.warning("scrub failed", extra={"storage_key": result.key, "reason": result.reason,
                                              "error": result.message})

    async def _withdraw_sharers(self, key: str, inodes: frozenset[tuple[int, int]]) -> None:
        """Damaged bytes that other models hold too (one inode, linked through the content
        store) damage them as well: repair them now rather than at their own next scrub."""
        if not inodes:
            return
        for other, seen in sorted(self.memory.observed.items()):
            if other == key or seen.state is not DiskState.PRESENT:
                continue
            if not any((dev, ino) in inodes for dev, ino, _ in seen.linked):
                continue
            summary = f"shares a damaged file with models/{key}"
            await asyncio.to_thread(self.store.withdraw, other)
            self.memory = self.memory.scrub_damaged(other, summary)
            await self._event("Warning", "ModelDamaged", f"{summary}, downloading again", other)

    async def _fail(self, key: str, reason: str, message: str, *, retry_after: float | None = None,
                    started_at: datetime | None = None) -> None:
        failures = self.memory.record(key).failures + 1
        delay = backoff_seconds(failures, self.settings.retry, retry_after=retry_after, draw=self._draw())
        self.memory = self.memory.failed(key, reason, message, retry_at=self._clock() + timedelta(seconds=delay),
                                         started_at=started_at)
        self.metrics.downloads.labels("failed").inc()
        self.metrics.download_failures.labels(reason).inc()
        uri = self.memory.shown_uri(key)
        await self._event("Warning", "DownloadFailed",
                          f"{uri}: {reason}: {message} (attempt {failures}, retrying in {delay:.0f}s)", key)

    # --- step 3 -------------------------------------------------------------------------------

    def _observe_disk(self, memory: AgentMemory) -> tuple[frozenset[str], dict[str, Observed], set[str]]:
        """The disk as it is (in a worker thread; `memory` is only read, and cannot change).
        Returns the alias refusals, the observation of every wanted model not being downloaded,
        and the storage keys with anything on disk; `AgentMemory.disk_seen` remembers them."""
        self.store.ensure_root()
        refused = self._sync_aliases(memory)
        on_disk = self.store.keys_on_disk()
        persisted = self.store.scrub_times()
        running = self.jobs.views()
        observed: dict[str, Observed] = {}
        for key, model in memory.wanted.items():
            job = running.get(key)
            if job is not None and job.kind is JobKind.DOWNLOAD:
                continue
            seen = self.store.observe(key, model.uri, scrubbed_at=memory.scrubbed_at(key, persisted.get(key)))
            observed[key] = seen
            if seen.state is DiskState.PRESENT and self.store.discard_leftover_staging(key):
                logger.info("removed staging left by a finished download", extra={"storage_key": key})
        # Entries left by deleted models, discarded staging or a crash: each pass, level-triggered.
        self.store.collect_blobs()
        return refused, observed, on_disk

    # --- step 4 -------------------------------------------------------------------------------

    def _plan(self) -> Plan:
        memory = self.memory
        current = plan(
            memory.wanted,
            on_disk=sorted(memory.on_disk),
            observed=memory.observed,
            jobs=self.jobs.views(),
            records=memory.records,
            now=self._clock(),
            scrub_interval=self.settings.scrub.interval_seconds,
            scrub_baseline=self.started_at,
        )
        self.memory = memory.planned(current)
        return current

    # --- step 5 -------------------------------------------------------------------------------

    async def _act(self, current: Plan) -> None:
        self.memory, pending = self.memory.take_pending_events()
        for event in pending:
            await self._emit(event)
        for key in current.cancels:
            logger.info("cancelling download of a model no longer wanted", extra={"storage_key": key})
            self.jobs.cancel(key)
        for key in current.deletions:
            await self._delete(key)
        if current.deletions:
            # What only the deleted models used leaves the disk now, not at the next pass.
            await asyncio.to_thread(self.store.collect_blobs)
        for key in current.downloads:
            await self._start_download(self.memory.wanted[key])
        for key in current.scrubs:
            if self.jobs.submit_scrub(key):
                logger.info("scrub started", extra={"storage_key": key})

    def _sync_aliases(self, memory: AgentMemory) -> frozenset[str]:
        """KServe <= 0.17's models/<modelName> names (node/aliases); before the folders are seen,
        so an old folder moved under its storage key is adopted in this very pass. Returns the
        refusals, each logged once while it lasts."""
        aliases = plan_aliases(self.settings.folder_layout,
                               ((e.model_name, key) for key, m in memory.wanted.items() for e in m.entries))
        for note in sync_aliases(self.store.models_dir, aliases.links):
            logger.info(note)
        _, new_refusals = memory.aliases_refused(aliases.refused)
        for note in new_refusals:
            logger.warning(note)
        return frozenset(aliases.refused)

    async def _delete(self, key: str) -> None:
        had_model = (self.store.models_dir / key).is_dir()
        kept = await asyncio.to_thread(self.store.delete, key)
        self.memory = self.memory.deleted(key)
        for note in kept:
            logger.warning("left in place", extra={"storage_key": key, "reason": note})
        if had_model:
            self.metrics.deletions.inc()
            await self._event("Normal", "ModelDeleted",
                              f"deleted models/{key}: no LocalModelNode entry asks for it", key, models=())

    async def _start_download(self, model: WantedModel) -> None:
        key = model.storage_key
        try:
            check_source_allowed(model.uri, allow_local=self.settings.downloads.allow_local_sources)
            credentials = await self._credentials(model)
            budgets = await self.backend.budgets(model)
            check_group_paths(self.host_root, budgets.group_paths)
        except LocalModelError as exc:
            await self._fail(key, exc.reason, str(exc))
            return
        observed = self.memory.observed.get(key, ABSENT)
        if observed.state is DiskState.DAMAGED:
            # The engine must not trust the old manifest: withdraw it before fetching again.
            await asyncio.to_thread(self.store.withdraw, key)
        budgets = replace(
            budgets,
            group_present_bytes={g: self._group_present_bytes(g, exclude=key) for g in model.node_groups},
            group_linked={g: self._group_linked(g, exclude=key) for g in model.node_groups},
            keep_free_bytes=self.settings.downloads.reserve_bytes,
        )
        request = DownloadRequest(key=key, uri=model.uri, credentials=credentials, budgets=budgets)
        if self.jobs.submit_download(request, model.node_groups):
            self.memory = self.memory.download_queued(key, credentials.missing)
            if credentials.missing:
                await self._event("Warning", "CredentialsMissing", f"{model.shown_uri}: {credentials.missing}", key)
            logger.info("download queued", extra={"storage_key": key, "uri": model.shown_uri,
                                                   "models": list(model.status_keys),
                                                   "credentials": list(credentials.origins)})
            for note in credentials.ignored:
                logger.warning("credentials ignored", extra={"storage_key": key, "reason": note})

    async def _credentials(self, model: WantedModel) -> Credentials:
        try:
            return await self.backend.credentials(model)
        except LocalModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - API errors become a reason in status
            _reason, message, _ = describe_error(exc)
            logger.warning("credentials could not be read", extra={"storage_key": model.storage_key,
                                                                   "error": message})
            raise CredentialsUnavailableError(message) from exc

    def _group_present(self, group: str, exclude: str) -> list[Observed]:
        found = []
        for key, model in self.memory.wanted.items():
            seen = self.memory.observed.get(key)
            if key != exclude and group in model.node_groups and seen and seen.state is DiskState.PRESENT:
                found.append(seen)
        return found

    def _group_present_bytes(self, group: str, *, exclude: str) -> int:
        """The bytes on disk of the group's complete models: shared files once."""
        return bytes_on_disk((o.bytes_total or 0, o.linked_bytes, o.linked)
                             for o in self._group_present(group, exclude))

    def _group_linked(self, group: str, *, exclude: str) -> frozenset[tuple[int, int]]:
        """The content store inodes the group's complete models already hold."""
        return frozenset((dev, ino) for o in self._group_present(group, exclude) for dev, ino, _ in o.linked)

    async def _announce_started(self) -> None:
        for key, view in self.jobs.views().items():
            if view.kind is JobKind.DOWNLOAD and view.running and key not in self.memory.announced:
                self.memory = self.memory.started_announced(key)
                await self._event_started(key)

    async def _event_started(self, key: str) -> None:
        uri = self.memory.shown_uri(key)
        await self._event("Normal", "DownloadStarted", f"downloading {uri} into models/{key}", key)

    def _log_progress(self) -> None:
        interval = self.settings.status.progress_log_seconds
        if interval is None:
            return
        now = self._clock()
        for key, view in self.jobs.views().items():
            if view.kind is not JobKind.DOWNLOAD or not view.running or not view.bytes_total:
                continue
            last = self.memory.progress_logged.get(key) or view.started_at or now
            if (now - last).total_seconds() < interval:
                continue
            self.memory = self.memory.progress_logged_at(key, now)
            model = self.memory.wanted.get(key)
            rate = view.bytes_per_second or 0
            left = (view.bytes_total - view.bytes_done) / rate if rate else None
            eta = f", about {left:.0f}s left" if left is not None else ""
            logger.info(
                f"downloading {model.shown_uri if model else key}: {100 * view.bytes_done / view.bytes_total:.0f}% "
                f"of {human_bytes(view.bytes_total)} at {human_bytes(rate)}/s{eta}",
                extra={"storage_key": key, "bytes_done": view.bytes_done, "bytes_total": view.bytes_total,
                       "bytes_per_second": rate},
            )

    # --- step 6 -------------------------------------------------------------------------------

    def _disk(self, observed: Mapping[str, Observed]) -> NodeDisk:
        usage = self.store.usage()
        # Bytes on disk: a file shared by several models through the content store counts once.
        used = bytes_on_disk((o.bytes_total or 0, o.linked_bytes, o.linked)
                             for o in observed.values() if o.state is DiskState.PRESENT)
        used += sum(v.bytes_done - v.bytes_reused for v in self.jobs.views().values()
                    if v.kind is JobKind.DOWNLOAD)
        self.metrics.disk_used.set(used)
        self.metrics.disk_free.set(usage.free_bytes)
        self.metrics.disk_capacity.set(usage.capacity_bytes)
        return NodeDisk(capacity_bytes=usage.capacity_bytes, used_bytes=used,
                        free_bytes=coarse_free_bytes(usage.free_bytes, usage.capacity_bytes))

    async def _publish(self, current: Plan) -> None:
        memory = self.memory
        assert memory.desired is not None
        disk = await asyncio.to_thread(self._disk, memory.observed)
        views = self.jobs.views()
        self.metrics.models_present.set(
            sum(1 for o in memory.observed.values() if o.state is DiskState.PRESENT))
        self.metrics.models_wanted.set(len(memory.wanted))
        self.metrics.downloads_running.set(sum(1 for v in views.values() if v.kind is JobKind.DOWNLOAD))
        desired = build_status(current.model_status, current.model_details, disk=disk,
                               observed_generation=memory.desired.generation,
                               peer_endpoint=self.peer_endpoint)
        now = self._clock()
        recheck = prune_recheck_due(pruned_seen_at=memory.pruned_seen_at, now=now,
                                    resync_seconds=self.resync_seconds)
        patch, significant = status_patch(memory.server_status, desired,
                                          additive_pruned=memory.additive_pruned and not recheck)
        self.memory = self.memory.status_held(None)
        if not patch:
            return
        due, later = write_due(significant=significant, last_write=memory.last_write, now=now,
                               progress_interval=self.settings.status.progress_interval_seconds)
        if not due:
            self.memory = self.memory.status_held(later)
            return
        stored = await self.backend.write_status(patch, desired)
        self.metrics.status_writes.inc()
        pruned_seen_at = memory.pruned_seen_at
        if stored is None:
            stored = apply_merge_patch(memory.server_status, patch)
        elif additive_fields_pruned(patch, stored):
            if pruned_seen_at is None:
                logger.info("the LocalModelNode CRD prunes localmodel's status fields (KServe's CRDs are "
                            "installed); writing status.modelStatus only")
            pruned_seen_at = now
        elif recheck:
            pruned_seen_at = None
            logger.info("the LocalModelNode CRD keeps localmodel's status fields now (localmodel's CRDs "
                        "are installed); writing the whole status again")
        self.memory = self.memory.status_written(now, dict(stored), pruned_seen_at=pruned_seen_at)
        if significant:
            logger.debug("status written", extra={"models": {k: v for k, v in desired["modelStatus"].items()}})

    # --- events ---------------------------------------------------------------------------------

    async def _event(self, type_: str, reason: str, message: str, key: str,
                     models: tuple[str, ...] | None = None) -> None:
        await self._emit(AgentEvent(type_, reason, message,
                                    models if models is not None else self.memory.status_keys(key)))

    async def _emit(self, event: AgentEvent) -> None:
        # The log line is the durable record (Events expire after an hour); standalone mode has
        # nothing else.
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        logger.log(level, event.message, extra={"event": event.reason, "models": list(event.models)})
        try:
            await self.backend.emit(event)
        except Exception as exc:  # noqa: BLE001 - an Event is never worth failing a pass
            logger.warning("event not recorded", extra={"reason": event.reason, "error": str(exc)})


class CredentialsUnavailableError(LocalModelError):
    """The objects holding a model's credentials could not be read (API error)."""

    reason = "CredentialsUnavailable"
