"""Which models each LocalModelNode must list (KServe's C6, with its drift bugs fixed).

Planned per node, not per cache: one write per node carries every cache's entry, so 1000 nodes ×
50 caches cost 1000 patches, not 50 000. An entry is wanted on a node when a live cache names a
group whose PV node affinity selects that node; the entry's `nodeGroup` is the first such group in
the cache's spec. Unlike KServe, entries of deleted caches, of groups dropped from a spec or
deleted, and of nodes that stopped matching are removed, so the agent frees the disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from localmodel.controller.names import CacheRef
from localmodel.controller.views import Cache, entry_ref


def assigned_group(cache: Cache, groups_of_node: Iterable[str]) -> str | None:
    """The first of the cache's groups that contains the node, or None."""
    member_of = set(groups_of_node)
    for group in cache.node_groups:
        if group in member_of:
            return group
    return None


def wanted_entries(groups_of_node: Iterable[str], caches: Iterable[Cache]) -> dict[CacheRef, dict[str, Any]]:
    """Entry per cache that should be on a node belonging to `groups_of_node`."""
    member_of = list(groups_of_node)
    wanted: dict[CacheRef, dict[str, Any]] = {}
    for cache in caches:
        if cache.deleting:
            continue
        group = assigned_group(cache, member_of)
        if group is not None:
            wanted[cache.ref] = cache.local_model_info(group)
    return wanted


def _normalized(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    storage = entry.get("storage") or {}
    return (
        entry.get("sourceModelUri", ""),
        entry.get("modelName", ""),
        entry.get("namespace") or "",
        entry.get("nodeGroup") or "",
        entry.get("serviceAccountName") or "",
        storage.get("key") or "",
        tuple(sorted((storage.get("parameters") or {}).items())),
    )


def same_entry(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal as KServe compares them: uri, service account, group and storage (C6)."""
    return _normalized(a) == _normalized(b)


def plan_entries(current: Sequence[Mapping[str, Any]], wanted: Mapping[CacheRef, Mapping[str, Any]],
                 ready: bool) -> list[dict[str, Any]]:
    """The node's new `spec.localModels`.

    Entries keep their order, so an unchanged node plans exactly its current list. A NotReady node
    keeps (and updates) the entries it has but gets no new ones: its agent may not be running.
    Duplicate entries for one cache are collapsed to the first.
    """
    result: list[dict[str, Any]] = []
    kept: set[CacheRef] = set()
    for entry in current:
        ref = entry_ref(entry)
        if ref in kept or ref not in wanted:
            continue
        kept.add(ref)
        result.append(dict(entry) if same_entry(entry, wanted[ref]) else dict(wanted[ref]))
    if ready:
        for ref in sorted(set(wanted) - kept):
            result.append(dict(wanted[ref]))
    return result


def entries_changed(current: Sequence[Mapping[str, Any]], planned: Sequence[Mapping[str, Any]]) -> bool:
    if len(current) != len(planned):
        return True
    return any(not same_entry(a, b) or entry_ref(a) != entry_ref(b) for a, b in zip(current, planned))
