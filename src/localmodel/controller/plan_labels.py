"""Cache-aware scheduling labels: a node says which complete models it holds.

`model.localmodel.kserve.io/<storageKey>=true` is on a node exactly while its LocalModelNode
lists a model with that storage key and reports it ModelDownloaded. Workloads select it with
nodeAffinity (the Pod webhook adds that for them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from localmodel.api.keys import status_key
from localmodel.api.types import ModelStatus
from localmodel.controller.names import NODE_MODEL_LABEL_PREFIX, NODE_MODEL_LABEL_VALUE, node_model_label


def desired_model_labels(local_model_node: Mapping[str, Any] | None) -> set[str]:
    if not local_model_node:
        return set()
    entries = (local_model_node.get("spec") or {}).get("localModels") or []
    statuses = (local_model_node.get("status") or {}).get("modelStatus") or {}
    labels: set[str] = set()
    for entry in entries:
        key = status_key(entry.get("modelName", ""), entry.get("namespace") or "")
        if statuses.get(key) == ModelStatus.DOWNLOADED.value:
            labels.add(node_model_label(entry.get("sourceModelUri", "")))
    return labels


def label_patch(current: Mapping[str, str], desired: set[str]) -> dict[str, str | None]:
    """Merge-patch for `metadata.labels`: add missing model labels, drop stale ones; {} if none."""
    patch: dict[str, str | None] = {}
    for key in sorted(desired):
        if current.get(key) != NODE_MODEL_LABEL_VALUE:
            patch[key] = NODE_MODEL_LABEL_VALUE
    for key in sorted(current):
        if key.startswith(NODE_MODEL_LABEL_PREFIX) and key not in desired:
            patch[key] = None
    return patch
