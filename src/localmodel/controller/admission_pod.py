"""Pod mutation: mount a cached model into any workload that names the cache.

A pod labelled `localmodel.kserve.io/cache: <name>` (a LocalModelNamespaceCache of its namespace,
else a LocalModelCache) gets the cache's serving PVC `{cache}-{group}` as a read-only volume,
mounted at `/mnt/models` (annotation `localmodel.kserve.io/mount-path`) with subPath
`models/<storageKey>` in every container (or those listed in `localmodel.kserve.io/containers`).
The group is the pod's `serving.kserve.io/nodegroup` annotation when it is one of the cache's,
else the cache's first group. `localmodel.kserve.io/node-affinity` picks scheduling help:
`preferred` (default) prefers nodes labelled as holding the complete model, `required` demands
one, `none` adds nothing (the PV's own node affinity still keeps the pod on the group's nodes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from localmodel.api.keys import storage_key
from localmodel.controller import names
from localmodel.kube.patches import json_patch
from localmodel.controller.views import Cache

AFFINITY_MODES = ("preferred", "required", "none")


class PodMutationError(ValueError):
    """The pod asks for something that cannot be honoured; admission refuses it."""


def pod_group(cache: Cache, pod: Mapping[str, Any]) -> str:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    wanted = annotations.get(names.NODE_GROUP_ANNOTATION)
    if wanted in cache.node_groups:
        return str(wanted)
    return cache.node_groups[0]


def _model_requirement(cache: Cache) -> dict[str, Any]:
    return {"key": names.node_model_label(cache.source_model_uri), "operator": "In",
            "values": [names.NODE_MODEL_LABEL_VALUE]}


def _add_affinity(spec: dict[str, Any], cache: Cache, mode: str) -> None:
    if mode == "none":
        return
    node_affinity = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {})
    requirement = _model_requirement(cache)
    if mode == "preferred":
        preferred = node_affinity.setdefault("preferredDuringSchedulingIgnoredDuringExecution", [])
        preferred.append({"weight": 100, "preference": {"matchExpressions": [requirement]}})
        return
    required = node_affinity.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({"matchExpressions": [requirement]})
    for term in terms:  # terms are ORed: the requirement must hold in each
        expressions = term.setdefault("matchExpressions", [])
        if requirement not in expressions:
            expressions.append(requirement)


def mutated_pod(pod: Mapping[str, Any], cache: Cache) -> dict[str, Any]:
    out = copy.deepcopy(dict(pod))
    meta = out.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    spec = out.setdefault("spec", {})
    if not cache.node_groups:
        raise PodMutationError(f"{cache.ref.kind} {cache.ref} has no node groups")
    mode = annotations.get(names.POD_NODE_AFFINITY_ANNOTATION, "preferred")
    if mode not in AFFINITY_MODES:
        raise PodMutationError(
            f"annotation {names.POD_NODE_AFFINITY_ANNOTATION} must be one of {', '.join(AFFINITY_MODES)}, "
            f"not {mode!r}")
    mount_path = annotations.get(names.POD_MOUNT_PATH_ANNOTATION, names.DEFAULT_POD_MOUNT_PATH)
    if not mount_path.startswith("/"):
        raise PodMutationError(f"annotation {names.POD_MOUNT_PATH_ANNOTATION} must be an absolute path")
    volumes = spec.setdefault("volumes", [])
    if any(v.get("name") == names.POD_VOLUME_NAME for v in volumes):
        return out  # already mutated (a reinvocation)
    group = pod_group(cache, out)
    volumes.append({
        "name": names.POD_VOLUME_NAME,
        "persistentVolumeClaim": {"claimName": names.serving_pvc_name(cache.ref, group), "readOnly": True},
    })
    wanted = annotations.get(names.POD_CONTAINERS_ANNOTATION)
    selected = {c.strip() for c in wanted.split(",") if c.strip()} if wanted else None
    containers = spec.get("containers") or []
    unknown = (selected or set()) - {c.get("name") for c in containers}
    if unknown:
        raise PodMutationError(
            f"annotation {names.POD_CONTAINERS_ANNOTATION} names unknown containers: {', '.join(sorted(unknown))}")
    for container in containers:
        if selected is not None and container.get("name") not in selected:
            continue
        mounts = container.setdefault("volumeMounts", [])
        mounts.append({"name": names.POD_VOLUME_NAME, "mountPath": mount_path,
                       "subPath": f"models/{storage_key(cache.source_model_uri)}", "readOnly": True})
    _add_affinity(spec, cache, mode)
    labels = dict(meta.get("labels") or {})
    if cache.ref.namespaced:
        labels[names.POD_CACHE_NAMESPACE_LABEL] = cache.ref.namespace
    else:
        labels.pop(names.POD_CACHE_NAMESPACE_LABEL, None)
    meta["labels"] = labels
    annotations[names.POD_MUTATED_ANNOTATION] = str(cache.ref)
    meta["annotations"] = annotations
    return out


def pod_patch(pod: Mapping[str, Any], cache: Cache) -> list[dict[str, Any]]:
    return json_patch(dict(pod), mutated_pod(pod, cache))
