"""Prometheus metrics of one controller replica, in a registry of its own (tests run several
replicas in one process). Served on the health port at `/metrics`."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from localmodel.kube.request_metrics import ApiRequestCounter


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.api_requests = ApiRequestCounter(r)
        self.reconciles = Counter(
            "localmodel_controller_reconciles_total", "Reconciles run, by queue and result (ok, retry, error).",
            ["queue", "result"], registry=r,
        )
        self.queue_depth = Gauge(
            "localmodel_controller_queue_depth", "Keys waiting in each work queue.", ["queue"], registry=r,
        )

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(name).set_function(lambda: float(depth()))
