"""Admission rules for caches: KServe's C12 (same messages) and capacity admission.

Pure decisions: the webhook server looks the objects up and passes them in. Each function returns
the refusal message, or None to allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from localmodel.api.keys import storage_key
from localmodel.api.quantity import format_bytes
from localmodel.controller.names import LOCAL_MODEL_LABEL, LOCAL_MODEL_NAMESPACE_LABEL
from localmodel.controller.views import Cache, Group


def duplicate_uri(cache: Cache, others: Iterable[Cache]) -> str | None:
    """Another cluster cache with the identical sourceModelUri (KServe compares raw strings)."""
    for other in others:
        if other.ref.name == cache.ref.name:
            continue
        if other.source_model_uri == cache.source_model_uri:
            return f"LocalModelCache {other.ref.name} has the same StorageURI {other.source_model_uri}"
    return None


def missing_groups(cache: Cache, groups: Mapping[str, Group]) -> str | None:
    """KServe's namespaced-cache rule, with the apiserver's NotFound text it wraps."""
    for name in cache.node_groups:
        if name not in groups:
            return (f'NodeGroup {name} not found: localmodelnodegroups.serving.kserve.io "{name}" '
                    "not found")
    return None


def in_use(cache: Cache, consumers: Sequence[tuple[str, Mapping[str, Any]]]) -> str | None:
    """A consumer listed in status still carries the cache label (C12 delete).

    `consumers` holds (kind, object) for each InferenceService / LLMInferenceService named in the
    cache's status that still exists.
    """
    for kind, obj in consumers:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(LOCAL_MODEL_LABEL) != cache.ref.name:
            continue
        if cache.ref.namespaced:
            if labels.get(LOCAL_MODEL_NAMESPACE_LABEL) != cache.ref.namespace:
                continue
            return (f"LocalModelNamespaceCache {cache.ref.namespace}/{cache.ref.name} is being used by "
                    f"{kind} {meta.get('namespace')}/{meta.get('name')}")
        return f"LocalModelCache {cache.ref.name} is being used by {kind} {meta.get('name')}"
    return None


def capacity(cache: Cache, groups: Mapping[str, Group], caches: Iterable[Cache]) -> str | None:
    """Refuse a cache whose model would push one of its groups past the group's storageLimit.

    Every node of a group holds every cache placed on the group, so the sum of model sizes must fit
    the per-node limit. Caches sharing a storage key share one folder and count once; a cache
    whose model is already placed on the group adds nothing.
    """
    if cache.model_size is None:
        return None
    key = storage_key(cache.source_model_uri)
    others = [c for c in caches if c.ref != cache.ref and not c.deleting]
    for group_name in cache.node_groups:
        group = groups.get(group_name)
        if group is None or group.storage_limit is None:
            continue
        placed: dict[str, int] = {}
        names: list[str] = []
        for other in others:
            if group_name not in other.node_groups:
                continue
            names.append(str(other.ref))
            other_key = storage_key(other.source_model_uri)
            placed[other_key] = max(placed.get(other_key, 0), other.model_size or 0)
        if key in placed:
            continue
        reserved = sum(placed.values())
        if reserved + cache.model_size > group.storage_limit:
            left = max(0, group.storage_limit - reserved)
            return (
                f"{cache.ref.kind} {cache.ref}: modelSize {format_bytes(cache.model_size)} does not fit "
                f"in LocalModelNodeGroup {group_name}: storageLimit {format_bytes(group.storage_limit)}, "
                f"{format_bytes(reserved)} already reserved by {len(names)} cache(s) "
                f"({', '.join(sorted(names))}), {format_bytes(left)} left"
            )
    return None


def capacity_relevant_change(old: Cache | None, new: Cache) -> bool:
    """Only a create, a larger modelSize or new groups can overflow a group.

    Re-checking unrelated updates (the controller adding its finalizer) would wedge a cache that
    was admitted before the limit was lowered.
    """
    if old is None:
        return True
    if (new.model_size or 0) > (old.model_size or 0):
        return True
    return bool(set(new.node_groups) - set(old.node_groups))
