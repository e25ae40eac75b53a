"""Prometheus metrics of the controller, in a registry of its own (several controllers can share
a process in tests).

Counters and the duration histogram are updated where the work happens (workers, webhook
handler, event recorder); queue depth, leadership and caches by copies state are read from the
live objects at scrape time by `_ClusterCollector`, so they can never drift from the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from localmodel.kube.request_metrics import ApiRequestCounter

# Reconciles are API round trips: milliseconds normally, seconds when the apiserver is slow.
_RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))

#: States of a cache by its `status.copies`, in the order they are tested.
CACHE_STATES = ("deleting", "failed", "complete", "partial", "no_nodes")


def cache_state(obj: Mapping[str, Any]) -> str:
    """One word for where a cache stands, from its object (status.copies, deletionTimestamp)."""
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "deleting"
    copies = (obj.get("status") or {}).get("copies") or {}
    total, available, failed = (int(copies.get(k) or 0) for k in ("total", "available", "failed"))
    if failed:
        return "failed"
    if total == 0:
        return "no_nodes"
    return "complete" if available >= total else "partial"


class _ClusterCollector(Collector):
    """Gauges computed at scrape time from callables the manager provides."""

    def __init__(self, queue_depths: Callable[[], Mapping[str, int]],
                 caches: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]],
                 is_leader: Callable[[], bool]) -> None:
        self._queue_depths = queue_depths
        self._caches = caches
        self._is_leader = is_leader

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("localmodel_controller_workqueue_depth",
                                  "Keys waiting in a work queue, queued or scheduled for later (not counting "
                                  "those being reconciled).",
                                  labels=["queue"])
        for queue, value in sorted(self._queue_depths().items()):
            depth.add_metric([queue], value)
        yield depth
        counts: dict[tuple[str, str], int] = {(kind, state): 0 for kind in ("LocalModelCache",
                                                                            "LocalModelNamespaceCache")
                                              for state in CACHE_STATES}
        for kind, obj in self._caches():
            counts[(kind, cache_state(obj))] += 1
        caches = GaugeMetricFamily(
            "localmodel_controller_caches",
            "Caches by kind and copies state: complete (available = total), partial (some nodes not "
            "done), failed (a node reports an error), no_nodes (no member node), deleting.",
            labels=["kind", "state"])
        for (kind, state), value in counts.items():
            caches.add_metric([kind, state], value)
        yield caches
        yield GaugeMetricFamily("localmodel_controller_leader",
                                "1 while this replica holds the leader Lease and runs the reconcilers.",
                                value=1 if self._is_leader() else 0)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter(
            "localmodel_controller_reconciles_total",
            "Reconciles finished, by kind (cache, node, group) and result (success, error, requeue).",
            ["kind", "result"], registry=r,
        )
        self.reconcile_errors = Counter(
            "localmodel_controller_reconcile_errors_total",
            "Reconciles that failed and were put back with backoff, by kind.", ["kind"], registry=r,
        )
        self.reconcile_duration = Histogram(
            "localmodel_controller_reconcile_duration_seconds", "Wall time of one reconcile, by kind.",
            ["kind"], buckets=_RECONCILE_BUCKETS, registry=r,
        )
        self.webhook_requests = Counter(
            "localmodel_controller_webhook_requests_total",
            "Admission requests answered, by webhook and operation.", ["webhook", "operation"], registry=r,
        )
        self.webhook_denials = Counter(
            "localmodel_controller_webhook_denials_total",
            "Admission requests refused, by webhook and operation.", ["webhook", "operation"], registry=r,
        )
        self.webhook_errors = Counter(
            "localmodel_controller_webhook_errors_total",
            "Admission requests that failed inside the webhook (answered as refusals), by webhook.",
            ["webhook"], registry=r,
        )
        self.events = Counter(
            "localmodel_controller_events_total", "Kubernetes Events recorded, by reason.", ["reason"],
            registry=r,
        )
        # localmodel_kube_api_requests_total{verb, resource, subresource, code}
        self.api_requests = ApiRequestCounter(r)

    def watch_cluster(self, queue_depths: Callable[[], Mapping[str, int]],
                      caches: Callable[[], Iterable[tuple[str, Mapping[str, Any]]]],
                      is_leader: Callable[[], bool]) -> None:
        self.registry.register(_ClusterCollector(queue_depths, caches, is_leader))
