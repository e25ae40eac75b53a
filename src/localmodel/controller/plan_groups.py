"""LocalModelNodeGroup status from what the agents report (KServe never writes it, #6137).

`storageLimit` is a per-node budget, so the group reports its fullest node: `used` is the largest
model usage over member nodes and `available` the smallest headroom, where a node's headroom is
the lesser of `storageLimit - used` and the disk's free bytes. A node's usage is the agent's
`status.disk.usedBytes`, else the sum of `bytesTotal` over its downloaded models. Nodes that
report nothing are skipped; with no report at all the status stays empty rather than claim 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from localmodel.api.quantity import format_bytes
from localmodel.api.types import ModelStatus
from localmodel.controller.views import Group


def node_used_bytes(local_model_node: Mapping[str, Any] | None) -> int | None:
    if not local_model_node:
        return None
    status = local_model_node.get("status") or {}
    disk = status.get("disk") or {}
    if isinstance(disk.get("usedBytes"), int):
        return int(disk["usedBytes"])
    details = status.get("modelDetails") or {}
    statuses = status.get("modelStatus") or {}
    sizes = [
        detail.get("bytesTotal")
        for key, detail in details.items()
        if statuses.get(key) == ModelStatus.DOWNLOADED.value and isinstance(detail.get("bytesTotal"), int)
    ]
    return sum(sizes) if sizes else None


def node_free_bytes(local_model_node: Mapping[str, Any] | None) -> int | None:
    disk = ((local_model_node or {}).get("status") or {}).get("disk") or {}
    free = disk.get("freeBytes")
    return int(free) if isinstance(free, int) else None


def group_status(group: Group, member_nodes: Iterable[Mapping[str, Any] | None]) -> dict[str, Any]:
    used_max: int | None = None
    headroom_min: int | None = None
    for lmn in member_nodes:
        used = node_used_bytes(lmn)
        free = node_free_bytes(lmn)
        if used is None and free is None:
            continue
        if used is not None:
            used_max = used if used_max is None else max(used_max, used)
        candidates = [free] if free is not None else []
        if group.storage_limit is not None and used is not None:
            candidates.append(group.storage_limit - used)
        if candidates:
            headroom = max(0, min(candidates))
            headroom_min = headroom if headroom_min is None else min(headroom_min, headroom)
    status: dict[str, Any] = {}
    if used_max is not None:
        status["used"] = format_bytes(used_max)
    if headroom_min is not None:
        status["available"] = format_bytes(headroom_min)
    return status
