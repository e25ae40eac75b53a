"""The cache status report: caches joined with their nodes' progress.

`build_report` is pure (objects in, rows out); `render_table` draws it with rich.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from localmodel.api.keys import status_key
from localmodel.api.quantity import human_bytes


@dataclass(frozen=True)
class NodeProgress:
    node: str
    phase: str
    bytes_done: int | None = None
    bytes_total: int | None = None
    bytes_per_second: int | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def percent(self) -> float | None:
        if self.bytes_total:
            return 100.0 * (self.bytes_done or 0) / self.bytes_total
        return None

    @property
    def eta_seconds(self) -> float | None:
        if self.bytes_total and self.bytes_per_second and self.phase == "NodeDownloading":
            return max(0.0, (self.bytes_total - (self.bytes_done or 0)) / self.bytes_per_second)
        return None


@dataclass(frozen=True)
class CacheReport:
    name: str
    namespace: str
    uri: str
    size: str
    available: int
    total: int
    failed: int
    nodes: tuple[NodeProgress, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["nodes"] = [
            {**asdict(n), "percent": n.percent, "etaSeconds": n.eta_seconds} for n in self.nodes
        ]
        return out


def _details_by_node(
    nodes: Iterable[Mapping[str, Any]], key: str
) -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for node in nodes:
        details = ((node.get("status") or {}).get("modelDetails") or {}).get(key)
        if details:
            found[node["metadata"]["name"]] = details
    return found


def build_report(
    caches: Iterable[Mapping[str, Any]], local_model_nodes: Iterable[Mapping[str, Any]]
) -> list[CacheReport]:
    """One row per cache (cluster and namespaced), with each node's phase and progress."""
    nodes = list(local_model_nodes)
    rows = []
    for cache in caches:
        meta, spec = cache["metadata"], cache.get("spec") or {}
        status = cache.get("status") or {}
        namespace = meta.get("namespace") or ""
        details = _details_by_node(nodes, status_key(meta["name"], namespace))
        copies = status.get("copies") or {}
        progress = tuple(
            NodeProgress(
                node=node,
                phase=phase or "NodeDownloadPending",
                bytes_done=details.get(node, {}).get("bytesDone"),
                bytes_total=details.get(node, {}).get("bytesTotal"),
                bytes_per_second=details.get(node, {}).get("bytesPerSecond"),
                reason=details.get(node, {}).get("reason"),
                message=details.get(node, {}).get("message"),
            )
            for node, phase in sorted((status.get("nodeStatus") or {}).items())
        )
        rows.append(
            CacheReport(
                name=meta["name"],
                namespace=namespace,
                uri=spec.get("sourceModelUri", ""),
                size=str(spec.get("modelSize", "")),
                available=copies.get("available") or 0,
                total=copies.get("total") or 0,
                failed=copies.get("failed") or 0,
                nodes=progress,
            )
        )
    return sorted(rows, key=lambda r: (r.namespace, r.name))


def _human_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


_PHASE_STYLE = {
    "NodeDownloaded": "green",
    "NodeDownloading": "cyan",
    "NodeDownloadPending": "yellow",
    "NodeDownloadError": "red",
    "NodeNotReady": "magenta",
}


def describe_node(progress: NodeProgress) -> str:
    """One line per node: phase, then whatever is known (percent, rate, ETA, reason)."""
    parts = [progress.phase.removeprefix("Node")]
    if progress.percent is not None and progress.phase != "NodeDownloaded":
        parts.append(f"{progress.percent:.0f}%")
    if progress.bytes_per_second and progress.phase == "NodeDownloading":
        parts.append(f"{human_bytes(progress.bytes_per_second)}/s")
    if progress.eta_seconds is not None:
        parts.append(f"ETA {_human_seconds(progress.eta_seconds)}")
    if progress.reason and progress.phase == "NodeDownloadError":
        parts.append(f"{progress.reason}: {progress.message or ''}".rstrip(": "))
    return " ".join(parts)


def render_table(rows: list[CacheReport]) -> Table:
    table = Table(title="Local model caches", title_justify="left", expand=False)
    for column in ("CACHE", "URI", "SIZE", "COPIES", "NODES"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = f"{row.namespace}/{row.name}" if row.namespace else row.name
        copies = f"{row.available}/{row.total}" + (f" ({row.failed} failed)" if row.failed else "")
        nodes = "\n".join(
            f"[{_PHASE_STYLE.get(n.phase, 'white')}]{n.node}: {describe_node(n)}[/]"
            for n in row.nodes
        ) or "-"
        table.add_row(name, row.uri, row.size, copies, nodes)
    return table
