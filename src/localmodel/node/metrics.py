"""Prometheus metrics of one agent, in a registry of its own (several agents can share a process
in tests). Names follow Prometheus conventions: `_total` counters, base units (bytes, seconds)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf"))


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.downloads = Counter(
            "localmodel_downloads_total", "Downloads finished, by result (succeeded, failed, cancelled).",
            ["result"], registry=r,
        )
        self.download_failures = Counter(
            "localmodel_download_failures_total", "Failed downloads by reason.", ["reason"], registry=r,
        )
        self.bytes = Counter(
            "localmodel_download_bytes_total", "Bytes fetched from sources.", registry=r,
        )
        self.reused_bytes = Counter(
            "localmodel_download_reused_bytes_total",
            "Bytes of downloaded models taken from the content store (other models' files) instead of fetched.",
            registry=r,
        )
        self.duration = Histogram(
            "localmodel_download_duration_seconds", "Wall time of successful downloads.",
            buckets=_DURATION_BUCKETS, registry=r,
        )
        self.downloads_running = Gauge(
            "localmodel_downloads_in_progress", "Downloads running or waiting for a slot.", registry=r,
        )
        self.models_present = Gauge(
            "localmodel_models_present", "Models on disk with a verified manifest.", registry=r,
        )
        self.models_wanted = Gauge(
            "localmodel_models_wanted", "Distinct models (storage keys) the spec asks for.", registry=r,
        )
        self.disk_used = Gauge(
            "localmodel_disk_used_bytes", "Bytes complete models hold on disk (a file shared by several counts once).",
            registry=r,
        )
        self.disk_free = Gauge(
            "localmodel_disk_free_bytes", "Free bytes on the models filesystem.", registry=r,
        )
        self.disk_capacity = Gauge(
            "localmodel_disk_capacity_bytes", "Size of the models filesystem.", registry=r,
        )
        self.scrubs = Counter(
            "localmodel_scrubs_total", "Full re-hash checks, by result (intact, damaged, failed).",
            ["result"], registry=r,
        )
        self.status_writes = Counter(
            "localmodel_status_writes_total", "Status patches sent.", registry=r,
        )
        self.reconcile_errors = Counter(
            "localmodel_reconcile_errors_total", "Reconcile passes that ended in an error.", registry=r,
        )
        self.adoptions = Counter(
            "localmodel_models_adopted_total",
            "Model folders found without a manifest (KServe's) whose files matched the source: kept, not "
            "downloaded.", registry=r,
        )
        self.deletions = Counter(
            "localmodel_models_deleted_total", "Model folders removed because they left the spec.", registry=r,
        )
        # Peer-to-peer (docs/p2p.md).
        self.fill_downloads = Counter(
            "localmodel_fill_downloads_total",
            "Downloads by where their bytes were meant to come from (peers, origin-slot, origin).",
            ["mode"], registry=r,
        )
        self.fill_bytes = Counter(
            "localmodel_fill_bytes_total",
            "Bytes of peer-filled downloads by where they came from (peer, origin, arbitration).",
            ["source"], registry=r,
        )
        self.peer_rejected_pieces = Counter(
            "localmodel_peer_rejected_pieces_total", "Pieces from peers refused by their sha256 check.",
            registry=r,
        )
        self.peer_quarantines = Counter(
            "localmodel_peer_quarantines_total", "Peers left out after sending bad data.", registry=r,
        )
        self.peer_served_bytes = Counter(
            "localmodel_peer_served_bytes_total", "Bytes sent to other agents.", registry=r,
        )
        self.peer_requests = Counter(
            "localmodel_peer_requests_total", "Requests from other agents, by HTTP status.", ["code"],
            registry=r,
        )
