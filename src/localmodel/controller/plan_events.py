"""Which Kubernetes Events a cache reconcile should record, decided from the status before and
after it (pure).

Events mark transitions, not states: a cache that stays complete records nothing more, and a
restarted controller that finds the same status records nothing again. The transitions:

- `CopiesComplete` (Normal): every member node holds the model, and before this reconcile not
  every one did.
- `NodeDownloadFailed` (Warning): a node's entry became NodeDownloadError; the message carries
  the agent's reason and message when its status has them (localmodel's CRDs keep them).
- `NodeGroupNotFound` (Warning): the set of named groups that do not exist changed and is not
  empty (the controller remembers it in memory, so a restart may record it once more).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from localmodel.api.types import NodeStatus

NORMAL, WARNING = "Normal", "Warning"


@dataclass(frozen=True)
class CacheEvent:
    type: str
    reason: str
    message: str


def _complete(copies: Mapping[str, Any] | None) -> bool:
    if not copies:
        return False
    total = int(copies.get("total") or 0)
    return total > 0 and int(copies.get("available") or 0) >= total


def status_events(
    old_status: Mapping[str, Any],
    new_status: Mapping[str, Any],
    failure_detail: Callable[[str], Mapping[str, Any] | None],
) -> list[CacheEvent]:
    """Events for the change from `old_status` to `new_status` of one cache.

    `failure_detail(node)` returns that node's `modelDetails` entry for the cache (or None).
    """
    events: list[CacheEvent] = []
    old_nodes: Mapping[str, str] = old_status.get("nodeStatus") or {}
    new_nodes: Mapping[str, str] = new_status.get("nodeStatus") or {}
    for node, phase in sorted(new_nodes.items()):
        if phase != NodeStatus.DOWNLOAD_ERROR.value or old_nodes.get(node) == phase:
            continue
        detail = failure_detail(node) or {}
        why = ": ".join(str(detail[k]) for k in ("reason", "message") if detail.get(k))
        events.append(CacheEvent(WARNING, "NodeDownloadFailed",
                                 f"node {node} failed to download the model" + (f": {why}" if why else "")))
    copies = new_status.get("copies") or {}
    if _complete(copies) and not _complete(old_status.get("copies")):
        events.append(CacheEvent(NORMAL, "CopiesComplete",
                                 f"model downloaded on all {copies.get('total')} node(s): "
                                 + ", ".join(sorted(new_nodes))))
    return events


def missing_group_event(before: Collection[str] | None, now: Collection[str]) -> CacheEvent | None:
    """A `NodeGroupNotFound` Event when the missing groups changed to a non-empty set."""
    if not now or (before is not None and set(before) == set(now)):
        return None
    names = ", ".join(sorted(now))
    return CacheEvent(WARNING, "NodeGroupNotFound",
                      f"LocalModelNodeGroup(s) not found: {names}; no node of them gets the model")
