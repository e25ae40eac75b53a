"""Small builders of raw Kubernetes objects for the controller's tests (pure data)."""

from __future__ import annotations

from typing import Any

from localmodel.controller.views import Cache, Group, NodeInfo


def group_obj(name: str, *, label: str = "pool", value: str | None = None, limit: str = "100Gi",
              path: str = "/models") -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": limit},
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "standard",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": label, "operator": "In", "values": [value or name]}]},
                ]}},
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": limit}},
                "storageClassName": "standard",
            },
        },
    }


def group(name: str, **kw: Any) -> Group:
    return Group.from_k8s(group_obj(name, **kw))


def cache_obj(name: str, uri: str, groups: list[str], *, namespace: str = "", size: str = "1Gi",
              uid: str = "uid-1", deleting: bool = False, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if namespace:
        meta["namespace"] = namespace
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelNamespaceCache" if namespace else "LocalModelCache",
        "metadata": meta,
        "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": groups, **spec},
    }


def cache(name: str, uri: str = "s3://bucket/model", groups: list[str] | None = None, **kw: Any) -> Cache:
    return Cache.from_k8s(cache_obj(name, uri, groups or ["gpu"], **kw))


def node(name: str, ready: bool = True, **labels: str) -> NodeInfo:
    return NodeInfo(name, labels, ready)


def node_obj(name: str, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
