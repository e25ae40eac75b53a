"""The PersistentVolumes and claims a cache needs (KServe's C8 and C10), with KServe's names.

Download volumes: one PV and PVC per group (PVC in the job namespace). Serving volumes: one PV and
PVC per (consumer namespace, group). Specs come verbatim from the group. Cluster caches own their
objects through a controller reference; PVs of namespaced caches cannot have one (a cluster object
cannot be owned by a namespaced one), so the controller deletes them itself.

Every object we create carries our managed-by label and annotations naming the cache, group and
role, so stale ones (a group dropped from the spec, a namespace with no consumer left) are found
and deleted; objects KServe created without them are found by name.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from localmodel.api.types import API_VERSION
from localmodel.controller import names
from localmodel.controller.names import CacheRef
from localmodel.controller.views import Cache, Consumer, Group

PV = "PersistentVolume"
PVC = "PersistentVolumeClaim"


@dataclass(frozen=True)
class VolumeKey:
    kind: str  # PV or PVC
    namespace: str  # "" for a PV
    name: str


@dataclass(frozen=True)
class Volume:
    key: VolumeKey
    body: Mapping[str, Any]


def owner_reference(cache: Cache) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": cache.ref.kind,
        "name": cache.ref.name,
        "uid": cache.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(cache: Cache, group: str, role: str, name: str, namespace: str,
              owned: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE},
        "annotations": {
            names.CACHE_ANNOTATION: str(cache.ref),
            names.GROUP_ANNOTATION: group,
            names.ROLE_ANNOTATION: role,
        },
    }
    if namespace:
        meta["namespace"] = namespace
    if owned:
        meta["ownerReferences"] = [owner_reference(cache)]
    return meta


def _pv(cache: Cache, group: Group, role: str, name: str) -> Volume:
    body = {
        "apiVersion": "v1",
        "kind": PV,
        "metadata": _metadata(cache, group.name, role, name, "", owned=not cache.ref.namespaced),
        "spec": copy.deepcopy(dict(group.pv_spec)),
    }
    return Volume(VolumeKey(PV, "", name), body)


def _pvc(cache: Cache, group: Group, role: str, name: str, namespace: str, volume_name: str) -> Volume:
    # A namespaced cache can own a claim only in its own namespace.
    owned = not cache.ref.namespaced or namespace == cache.ref.namespace
    spec = copy.deepcopy(dict(group.pvc_spec))
    spec["volumeName"] = volume_name
    body = {
        "apiVersion": "v1",
        "kind": PVC,
        "metadata": _metadata(cache, group.name, role, name, namespace, owned=owned),
        "spec": spec,
    }
    return Volume(VolumeKey(PVC, namespace, name), body)


def download_volumes(cache: Cache, groups: Sequence[Group], job_namespace: str) -> list[Volume]:
    """C8: the download PV and PVC of every existing group of the cache."""
    out: list[Volume] = []
    for group in groups:
        pv_name = names.download_pv_name(cache.ref, group.name)
        out.append(_pv(cache, group, names.ROLE_DOWNLOAD, pv_name))
        out.append(_pvc(cache, group, names.ROLE_DOWNLOAD, names.download_pvc_name(cache.ref, group.name),
                        job_namespace, pv_name))
    return out


def consumer_groups(cache: Cache, consumers: Iterable[Consumer]) -> dict[str, list[str]]:
    """Namespace → groups its consumers use (C10).

    A consumer's `serving.kserve.io/nodegroup` annotation picks one of the cache's groups; an
    annotation naming another group is ignored (that consumer is skipped); no annotation means
    the cache's first group. A namespaced cache serves only its own namespace.
    """
    if not cache.node_groups:
        return {}
    result: dict[str, list[str]] = {}
    for consumer in consumers:
        if cache.ref.namespaced and consumer.namespace != cache.ref.namespace:
            continue
        if consumer.node_group is not None:
            if consumer.node_group not in cache.node_groups:
                continue
            group = consumer.node_group
        else:
            group = cache.node_groups[0]
        groups = result.setdefault(consumer.namespace, [])
        if group not in groups:
            groups.append(group)
    return {ns: sorted(groups, key=cache.node_groups.index) for ns, groups in sorted(result.items())}


def serving_volumes(cache: Cache, groups: Mapping[str, Group],
                    used: Mapping[str, Sequence[str]]) -> list[Volume]:
    """C10: PV `{name}-{group}-{namespace}` and PVC `{name}-{group}` per (namespace, group) used."""
    out: list[Volume] = []
    for namespace, group_names in used.items():
        for group_name in group_names:
            group = groups.get(group_name)
            if group is None:
                continue  # group object missing: nothing to copy the PV spec from
            pv_name = names.serving_pv_name(cache.ref, group_name, namespace)
            out.append(_pv(cache, group, names.ROLE_SERVING, pv_name))
            out.append(_pvc(cache, group, names.ROLE_SERVING, names.serving_pvc_name(cache.ref, group_name),
                            namespace, pv_name))
    return out


def kserve_named_serving(cache: CacheRef, group_names: Iterable[str], namespace: str) -> list[VolumeKey]:
    """Serving objects of one namespace by name, for objects KServe created without our labels."""
    keys: list[VolumeKey] = []
    for group in group_names:
        keys.append(VolumeKey(PVC, namespace, names.serving_pvc_name(cache, group)))
        keys.append(VolumeKey(PV, "", names.serving_pv_name(cache, group, namespace)))
    return keys


def kserve_named_download(cache: CacheRef, group_names: Iterable[str], job_namespace: str) -> list[VolumeKey]:
    keys: list[VolumeKey] = []
    for group in group_names:
        keys.append(VolumeKey(PVC, job_namespace, names.download_pvc_name(cache, group)))
        keys.append(VolumeKey(PV, "", names.download_pv_name(cache, group)))
    return keys


def volumes_to_delete(
    cache: Cache,
    owned: Iterable[VolumeKey],
    desired: Iterable[Volume],
    previous_namespaces: Iterable[str],
    job_namespace: str,
) -> list[VolumeKey]:
    """Objects to delete: everything owned but not desired, plus KServe-named leftovers.

    While the cache is deleting nothing is desired, so everything goes (namespaced caches need
    this; cluster caches would also go by garbage collection). Claims come before volumes.
    """
    desired_keys = {v.key for v in desired}
    doomed = {key for key in owned if key not in desired_keys}
    current_namespaces = {v.key.namespace for v in desired if v.key.kind == PVC}
    for namespace in previous_namespaces:
        if namespace not in current_namespaces or cache.deleting:
            doomed.update(k for k in kserve_named_serving(cache.ref, cache.node_groups, namespace)
                          if k not in desired_keys)
    if cache.deleting:
        doomed.update(kserve_named_download(cache.ref, cache.node_groups, job_namespace))
    return sorted(doomed, key=lambda k: (k.kind != PVC, k.namespace, k.name))


def previous_consumer_namespaces(status: Mapping[str, Any]) -> set[str]:
    """Namespaces of the consumers the cache's status listed last time (KServe's bookkeeping)."""
    found: set[str] = set()
    for key in ("inferenceServices", "llmInferenceServices"):
        for ref in status.get(key) or []:
            if ref.get("namespace"):
                found.add(ref["namespace"])
    return found
