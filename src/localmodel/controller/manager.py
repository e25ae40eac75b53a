"""Wires the controller together: informers, queues, workers, leader election, webhooks, health
and metrics.

Every replica runs the informers and serves the webhooks (they only read); only the leader runs
the reconcile workers. Leadership is lost → workers are cancelled; the informers keep going.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from lightkube import ApiError, AsyncClient

from localmodel.controller.cluster import ClusterView, Queues
from localmodel.controller.events import EventRecorder
from localmodel.controller.leader import LeaderElector, LeaseSettings
from localmodel.controller.metrics import ControllerMetrics
from localmodel.controller.names import LEADER_LOCK_NAME, CacheRef
from localmodel.controller.reconcilers import Reconcilers, RetryNow
from localmodel.controller.webhook import Webhooks, certificate_present, serve_once_certified, serve_webhooks
from localmodel.kube.config import DEFAULT_NAMESPACE
from localmodel.kube.ops import OpsServer
from localmodel.kube.workqueue import WorkQueue

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Settings:
    pod_namespace: str = DEFAULT_NAMESPACE
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{os.getpid()}")
    workers: int = 4
    leader_election: bool = True
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # webhooks: served when a certificate directory (tls.crt, tls.key) is given
    webhook_host: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_cert_dir: Path | None = None
    isvc_defaulting: bool = True
    # health (/healthz, /readyz) and metrics: None not served, 0 any free port
    bind_address: str = "0.0.0.0"
    health_port: int | None = 8081
    # Prometheus text format on /metrics; None: not served (the CLI's default is 8080)
    metrics_port: int | None = None
    resync_seconds: float = 600.0
    # seconds over which agent reports are batched before a group's status is recomputed
    group_status_batch: float = 1.0
    # while agent reports keep coming, a cache's status is rewritten at most once per this many
    # seconds (an isolated report is written at once)
    cache_status_interval: float = 5.0


class Manager:
    def __init__(self, client: AsyncClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.cache_queue: WorkQueue[CacheRef] = WorkQueue()
        self.node_queue: WorkQueue[str] = WorkQueue()
        self.group_queue: WorkQueue[str] = WorkQueue()
        self.view = ClusterView(client, settings.pod_namespace,
                                Queues(self.cache_queue.add, self.node_queue.add, self.group_queue.add,
                                       lambda group: self.group_queue.add_after(group, settings.group_status_batch),
                                       lambda ref: self.cache_queue.add_spaced(ref, settings.cache_status_interval)))
        self.metrics = ControllerMetrics()
        self.metrics.api_requests.attach(client)
        self.metrics.watch_in_progress("cache", lambda: self.cache_queue.processing)
        self.metrics.watch_in_progress("node", lambda: self.node_queue.processing)
        self.metrics.watch_in_progress("group", lambda: self.group_queue.processing)
        self.reconcilers = Reconcilers(client, self.view, EventRecorder(client, settings.identity, self.metrics))
        self.elector = LeaderElector(client, LeaseSettings(
            settings.pod_namespace, LEADER_LOCK_NAME, settings.identity, settings.lease_duration,
            settings.renew_deadline, settings.retry_period))
        self.webhook_port: int | None = None  # the bound port, once serving
        self.metrics_port: int | None = None  # the bound port, once serving
        self.webhooks = Webhooks(self.view, client, self.metrics, self.cache_queue.add)
        self.ready = asyncio.Event()
        self.reconciles = 0
        self.errors = 0
        # last: the registry collects once on registration, which reads the fields above
        self.metrics.watch_cluster(
            lambda: {"cache": self.cache_queue.waiting, "node": self.node_queue.waiting,
                     "group": self.group_queue.waiting},
            self._cache_objects, self._leading)

    def _cache_objects(self) -> list[tuple[str, dict[str, Any]]]:
        return [*(("LocalModelCache", o) for o in self.view.caches.store.values()),
                *(("LocalModelNamespaceCache", o) for o in self.view.ns_caches.store.values())]

    def _leading(self) -> bool:
        return self.elector.is_leader if self.settings.leader_election else self.ready.is_set()

    async def _worker(self, name: str, queue: WorkQueue[K], reconcile: Callable[[K], Awaitable[None]]) -> None:
        while True:
            key = await queue.get()
            started = time.monotonic()
            result = "error"
            try:
                await reconcile(key)
                queue.forget(key)
                result = "success"
            except asyncio.CancelledError:
                result = "cancelled"
                raise
            except RetryNow:
                result = "requeue"
                queue.add(key)
            except ApiError as error:
                self.errors += 1
                delay = queue.add_rate_limited(key)
                level = logging.INFO if error.status.code == 409 else logging.WARNING
                log.log(level, "%s %s: %s (retry in %.1fs)", name, key, error.status.message, delay)
            except Exception as error:
                self.errors += 1
                delay = queue.add_rate_limited(key)
                log.warning("%s %s: %s (retry in %.1fs)", name, key, error, delay, exc_info=not isinstance(
                    error, ValueError))
            finally:
                self.reconciles += 1
                queue.done(key)
                if result != "cancelled":
                    self.metrics.reconciles.labels(name, result).inc()
                    self.metrics.reconcile_duration.labels(name).observe(time.monotonic() - started)
                    if result == "error":
                        self.metrics.reconcile_errors.labels(name).inc()

    def enqueue_everything(self) -> None:
        for cache in self.view.all_caches():
            self.cache_queue.add(cache.ref)
        for node_key in {*self.view.nodes.store, *self.view.lmns.store}:
            self.node_queue.add(node_key[1])
        for group_key in self.view.groups.store:
            self.group_queue.add(group_key[1])

    async def _resync(self) -> None:
        # Level-triggered safety net: anything a lost event left behind is corrected here.
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            self.enqueue_everything()

    async def lead(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.view.informers))
        self.enqueue_everything()
        tasks = [asyncio.create_task(self._resync())]
        r = self.reconcilers
        for n in range(self.settings.workers):
            tasks.append(asyncio.create_task(self._worker("cache", self.cache_queue, r.reconcile_cache)))
            tasks.append(asyncio.create_task(self._worker("node", self.node_queue, r.reconcile_node)))
        if self.settings.workers:
            tasks.append(asyncio.create_task(self._worker("group", self.group_queue, r.reconcile_group)))
        try:
            await asyncio.gather(*tasks)  # runs until cancelled (the resync task never ends)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self) -> None:
        """Run until cancelled."""
        runners: list[web.AppRunner] = []
        informer_tasks = [asyncio.create_task(i.run()) for i in self.view.informers]
        ops = OpsServer(self.metrics.registry, bind_address=self.settings.bind_address,
                        health_port=self.settings.health_port, metrics_port=self.settings.metrics_port,
                        live=lambda: (True, "running"),
                        ready=lambda: (True, "informers synced") if self.ready.is_set()
                        else (False, "informers not synced"))
        try:
            await ops.start()
            self.metrics_port = ops.ports.get("metrics")
            cert_dir = self.settings.webhook_cert_dir
            if cert_dir is not None:
                serve = functools.partial(serve_webhooks, self.webhooks, cert_dir, self.settings.webhook_host,
                                          self.settings.webhook_port, isvc_defaulting=self.settings.isvc_defaulting)
                if certificate_present(cert_dir):
                    runner, self.webhook_port = await serve()
                    runners.append(runner)
                else:
                    informer_tasks.append(asyncio.create_task(serve_once_certified(
                        cert_dir, serve, runners, on_port=lambda port: setattr(self, "webhook_port", port))))
            await asyncio.gather(*(i.synced.wait() for i in self.view.informers))
            self.ready.set()
            log.info("controller %s: caches synced", self.settings.identity)
            if self.settings.leader_election:
                await self.elector.run(self.lead)
            else:
                await self.lead()
        finally:
            for task in informer_tasks:
                task.cancel()
            await asyncio.gather(*informer_tasks, return_exceptions=True)
            await ops.stop()
            for runner in runners:
                await runner.cleanup()
            for queue in (self.cache_queue, self.node_queue, self.group_queue):
                queue.close()
            if self.settings.leader_election:
                await self.elector.release()
