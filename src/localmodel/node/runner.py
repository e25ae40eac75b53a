"""The agent's main loop: passes on change, on timers and while downloads run, until told to stop.

    wake (watch / file change / job start or end) ─┐
    resync timer (reconcilationFrequencyInSecs) ────┼─► full pass
    retry / scrub / status-throttle deadlines ──────┘
    every second while downloads run ───────────────► progress pass (status only)

A failed pass (API server unreachable...) is retried after 1, 2, 4... seconds, at most the
resync period; downloads go on meanwhile, and progress passes wait for a full pass to succeed. On stop (SIGTERM) downloads are cancelled; the engine keeps their staging data,
so the next agent resumes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from localmodel.api.types import ModelStatus
from localmodel.backoff import exponential_delay
from localmodel.fetch.options import FetchOptions
from localmodel.kube.ops import OpsServer
from localmodel.node.backend import Backend
from localmodel.node.downloads import Jobs
from localmodel.node.hostpath import read_host_root
from localmodel.node.metrics import AgentMetrics
from localmodel.node.plan import JobKind
from localmodel.node.reconcile import Reconciler, utcnow
from localmodel.node.settings import AgentSettings
from localmodel.node.store import ModelStore

if TYPE_CHECKING:
    from localmodel.node.peer_runtime import PeerRuntime

logger = logging.getLogger(__name__)

#: Seconds between progress passes while a download runs.
PROGRESS_TICK = 1.0
#: Seconds a stopping agent waits for download threads to reach a safe point.
STOP_GRACE = 20.0


@dataclass
class _LoopState:
    """What liveness and readiness look at."""

    last_loop: datetime
    last_error: str | None = None


def settled(reconciler: Reconciler) -> tuple[bool, bool]:
    """(nothing left to do right now, every model downloaded) for `--once`."""
    plan = reconciler.last_plan
    if plan is None or not reconciler.synced or reconciler.jobs.views():
        return False, False
    phases = set(plan.model_status.values())
    busy = bool(plan.downloads or plan.scrubs or plan.deletions or plan.cancels)
    done = phases <= {ModelStatus.DOWNLOADED, ModelStatus.DOWNLOAD_ERROR}
    return done and not busy, phases <= {ModelStatus.DOWNLOADED}


async def run_agent(settings: AgentSettings, backend: Backend, *, stop: asyncio.Event,
                    options: FetchOptions | None = None, once: bool = False,
                    peer_factory: Callable[[AgentMetrics], PeerRuntime | None] | None = None) -> int:
    """Run until `stop` is set (or, with `once`, until every model is settled). Exit code.

    `peer_factory` builds the peer-to-peer parts (cluster mode; see docs/p2p.md)."""
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def poke() -> None:
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop closed while a thread finished
            pass

    metrics = AgentMetrics()
    store = ModelStore(settings.root)
    options = options or settings.downloads.engine_options
    peers = await asyncio.to_thread(peer_factory, metrics) if peer_factory is not None else None
    jobs = Jobs(store, max_concurrent=settings.downloads.max_concurrent, options=options,
                temp_dir=settings.downloads.temp_dir, on_change=poke, on_bytes=metrics.bytes.inc,
                insecure_registries=settings.downloads.insecure_registries,
                fill=peers.fill if peers is not None else None)
    reconciler = Reconciler(settings, backend, store, jobs, metrics)
    reconciler.host_root = read_host_root(settings.root)
    if reconciler.host_root is not None:
        logger.info("root on the node", extra={"root": str(settings.root), "node_path": reconciler.host_root.path,
                                                "source": reconciler.host_root.source,
                                                "anchored": reconciler.host_root.anchored})
    agent = _LoopState(last_loop=utcnow())

    def live() -> tuple[bool, str]:
        limit = timedelta(seconds=3 * reconciler.resync_seconds + 60)
        age = utcnow() - agent.last_loop
        return age <= limit, f"last loop {age.total_seconds():.0f}s ago"

    def ready() -> tuple[bool, str]:
        if not reconciler.synced:
            return False, "first pass not finished"
        if agent.last_error:
            return False, agent.last_error
        return True, "synced"

    server = OpsServer(metrics.registry, bind_address=settings.server.bind_address,
                       health_port=settings.server.health_port, metrics_port=settings.server.metrics_port,
                       live=live, ready=ready)
    await server.start()
    if peers is not None:
        def damaged(key: str, _problem: str) -> None:
            # Like a failed scrub: withdraw the proof, so the next pass fetches the model again.
            store.withdraw(key)
            poke()

        await asyncio.to_thread(peers.start, on_damage=damaged)
        reconciler.peer_endpoint = peers.endpoint
        directory = peers.fill.directory
        # Under KServe's CRDs status.peerEndpoint is pruned; the peer Service still finds nodes.
        peers.fill.discovery_works = lambda: (not reconciler.additive_pruned
                                              or directory.finds_peers_without_status())
    await backend.start(poke)
    logger.info("agent started", extra={"node": settings.node_name, "root": str(settings.root),
                                        "max_concurrent": settings.downloads.max_concurrent})
    next_full = utcnow()
    wake_at: datetime | None = None
    failures = 0
    exit_code = 0
    try:
        while not stop.is_set():
            now = utcnow()
            agent.last_loop = now
            if wake.is_set() or now >= next_full or (wake_at is not None and now >= wake_at):
                wake.clear()
                try:
                    wake_at = await reconciler.full_pass()
                    failures = 0
                    agent.last_error = None
                    next_full = utcnow() + timedelta(seconds=reconciler.resync_seconds)
                except Exception as exc:  # noqa: BLE001 - keep the agent alive, retry soon
                    failures += 1
                    next_full = _failed(exc, "reconcile failed", failures, reconciler, metrics, agent)
            elif jobs.has_running_downloads() and failures == 0:
                # Progress passes write status; while the API fails only full passes (with
                # their backoff) try again. Downloads run on regardless.
                try:
                    wake_at = await reconciler.progress_pass()
                except Exception as exc:  # noqa: BLE001 - an outage must not stop downloads
                    failures += 1
                    next_full = _failed(exc, "status update failed", failures, reconciler, metrics, agent)
            if once:
                done, all_downloaded = settled(reconciler)
                if done:
                    exit_code = 0 if all_downloaded else 1
                    _log_summary(reconciler)
                    break
            deadline = min(d for d in (next_full, wake_at) if d is not None)
            timeout = max(0.0, (deadline - utcnow()).total_seconds())
            if jobs.has_running_downloads():
                timeout = min(timeout, PROGRESS_TICK)
            await _wait_any(wake, stop, timeout)
    finally:
        running = [k for k, v in jobs.views().items() if v.kind is JobKind.DOWNLOAD]
        if running:
            logger.info(f"agent stopping; {len(running)} download(s) stopped, partial data is kept for resume",
                        extra={"storage_keys": running})
        else:
            logger.info("agent stopping")
        stopping = utcnow()
        await asyncio.to_thread(jobs.shutdown, STOP_GRACE)
        if peers is not None:
            await asyncio.to_thread(peers.stop)
            if reconciler.peer_endpoint:
                await _withdraw_endpoint(backend)
        await backend.close()
        await server.stop()
        logger.info("agent stopped", extra={"seconds": round((utcnow() - stopping).total_seconds(), 3)})
    return exit_code


def _failed(exc: Exception, what: str, failures: int, reconciler: Reconciler, metrics: AgentMetrics,
            agent: _LoopState) -> datetime:
    """Record a failed pass; when the next full pass is due (1, 2, 4... s, at most resync)."""
    metrics.reconcile_errors.inc()
    agent.last_error = f"{exc.__class__.__name__}: {exc}"
    delay = exponential_delay(failures - 1, base=1.0, cap=min(reconciler.resync_seconds, 64.0))
    logger.warning(what, extra={"error": agent.last_error, "retry_in": delay})
    return utcnow() + timedelta(seconds=delay)


async def _withdraw_endpoint(backend: Backend) -> None:
    """Take this agent out of peer discovery before it goes."""
    try:
        await backend.write_status({"peerEndpoint": None}, {})
    except Exception as exc:  # noqa: BLE001 - peers skip an endpoint that does not answer anyway
        logger.info("peer endpoint not withdrawn", extra={"error": str(exc)})


def _log_summary(reconciler: Reconciler) -> None:
    """One line per model for `--once`: where it is, or why it is not."""
    plan = reconciler.last_plan
    if plan is None:
        return
    downloaded = sum(1 for phase in plan.model_status.values() if phase == ModelStatus.DOWNLOADED)
    logger.info(f"{downloaded} of {len(plan.model_status)} models downloaded into {reconciler.store.models_dir}")
    for key, phase in sorted(plan.model_status.items()):
        detail = plan.model_details.get(key)
        where = f"models/{detail.storage_key}" if detail and detail.storage_key else ""
        why = f"{detail.reason}: {detail.message}" if detail and detail.reason else ""
        level = logging.INFO if phase == ModelStatus.DOWNLOADED else logging.WARNING
        logger.log(level, f"  {key}: {ModelStatus(phase).value} {why or where}".rstrip())


async def _wait_any(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
