"""A cache's status: nodeStatus, copies and consumers (KServe's C6, C7, C10, fixed).

nodeStatus lists exactly the current members of the cache's existing groups: a deleted node or
one that left the group disappears (KServe keeps it forever, #6159), and a NotReady node reads
NodeNotReady even when it had the model (KServe keeps the stale value).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from localmodel.api.types import NodeStatus, node_status_for
from localmodel.controller.views import Cache, Consumer, NodeInfo


def node_statuses(
    cache: Cache,
    members: Iterable[NodeInfo],
    model_status_of: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, str]:
    """Node name → NodeStatus for every member node of the cache's groups.

    `model_status_of(node)` returns that node's LocalModelNode `status.modelStatus` (or None).
    """
    result: dict[str, str] = {}
    for node in members:
        if not node.ready:
            result[node.name] = NodeStatus.NOT_READY.value
            continue
        statuses = model_status_of(node.name) or {}
        result[node.name] = node_status_for(statuses.get(cache.status_key)).value
    return dict(sorted(result.items()))


def copies(node_status: Mapping[str, str]) -> dict[str, int]:
    """KServe's C7 over the whole map: total, NodeDownloaded and NodeDownloadError counts."""
    values = list(node_status.values())
    return {
        "available": values.count(NodeStatus.DOWNLOADED.value),
        "total": len(values),
        "failed": values.count(NodeStatus.DOWNLOAD_ERROR.value),
    }


def consumer_refs(consumers: Iterable[Consumer]) -> list[dict[str, str]]:
    refs = sorted({(c.namespace, c.name) for c in consumers})
    return [{"name": name, "namespace": namespace} for namespace, name in refs]


def desired_status(
    node_status: Mapping[str, str],
    inference_services: Sequence[Consumer],
    llm_inference_services: Sequence[Consumer],
) -> dict[str, Any]:
    """The whole status block; empty lists are left out, as KServe's omitempty does."""
    status: dict[str, Any] = {"nodeStatus": dict(node_status), "copies": copies(node_status)}
    if inference_services:
        status["inferenceServices"] = consumer_refs(inference_services)
    if llm_inference_services:
        status["llmInferenceServices"] = consumer_refs(llm_inference_services)
    return status
