"""Read-only views of the objects the controller plans from, built from raw API dicts.

Views keep only what planning needs, so informer stores stay small at 1000 nodes and planning
functions never touch a client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from localmodel.api.keys import status_key
from localmodel.api.quantity import quantity_or_none
from localmodel.controller.affinity import selector_terms
from localmodel.controller.names import CacheRef


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


@dataclass(frozen=True)
class NodeInfo:
    """What matters about a Node: its name, labels and whether it is Ready."""

    name: str
    labels: Mapping[str, str]
    ready: bool

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> NodeInfo:
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        meta = _meta(obj)
        return cls(meta.get("name", ""), dict(meta.get("labels") or {}), ready)


@dataclass(frozen=True)
class Group:
    """A LocalModelNodeGroup."""

    name: str
    terms: list[Mapping[str, Any]] | None
    pv_spec: Mapping[str, Any]
    pvc_spec: Mapping[str, Any]
    storage_limit: int | None
    status: Mapping[str, Any]

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> Group:
        spec = obj.get("spec") or {}
        pv_spec = spec.get("persistentVolumeSpec") or {}
        return cls(
            name=_meta(obj).get("name", ""),
            terms=selector_terms(pv_spec),
            pv_spec=pv_spec,
            pvc_spec=spec.get("persistentVolumeClaimSpec") or {},
            storage_limit=quantity_or_none(spec.get("storageLimit")),
            status=obj.get("status") or {},
        )


@dataclass(frozen=True)
class Cache:
    """A LocalModelCache or LocalModelNamespaceCache."""

    ref: CacheRef
    uid: str
    source_model_uri: str
    model_size: int | None
    node_groups: tuple[str, ...]
    service_account_name: str | None
    storage: Mapping[str, Any] | None
    deleting: bool
    finalizers: tuple[str, ...]
    status: Mapping[str, Any] = field(default_factory=dict)
    resource_version: str = ""

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> Cache:
        meta = _meta(obj)
        spec = obj.get("spec") or {}
        return cls(
            ref=CacheRef(meta.get("namespace") or "", meta.get("name", "")),
            uid=meta.get("uid", ""),
            source_model_uri=spec.get("sourceModelUri", ""),
            model_size=quantity_or_none(spec.get("modelSize")),
            node_groups=tuple(spec.get("nodeGroups") or ()),
            service_account_name=spec.get("serviceAccountName") or None,
            storage=spec.get("storage") or None,
            deleting=bool(meta.get("deletionTimestamp")),
            finalizers=tuple(meta.get("finalizers") or ()),
            status=obj.get("status") or {},
            resource_version=meta.get("resourceVersion", ""),
        )

    @property
    def status_key(self) -> str:
        return status_key(self.ref.name, self.ref.namespace)

    def local_model_info(self, group: str) -> dict[str, Any]:
        """The LocalModelNode entry for this cache on a node of `group` (KServe's LocalModelInfo)."""
        info: dict[str, Any] = {
            "sourceModelUri": self.source_model_uri,
            "modelName": self.ref.name,
            "namespace": self.ref.namespace,
            "nodeGroup": group,
        }
        if self.service_account_name:
            info["serviceAccountName"] = self.service_account_name
        if self.storage:
            info["storage"] = dict(self.storage)
        return info


@dataclass(frozen=True)
class Consumer:
    """An InferenceService, LLMInferenceService or Pod that uses a cache."""

    kind: str  # InferenceService | LLMInferenceService | Pod
    namespace: str
    name: str
    node_group: str | None  # the serving.kserve.io/nodegroup annotation, if any

    @classmethod
    def from_k8s(cls, kind: str, obj: Mapping[str, Any]) -> Consumer:
        from localmodel.controller.names import NODE_GROUP_ANNOTATION

        meta = _meta(obj)
        return cls(kind, meta.get("namespace", ""), meta.get("name", ""),
                   (meta.get("annotations") or {}).get(NODE_GROUP_ANNOTATION))


def entry_ref(entry: Mapping[str, Any]) -> CacheRef:
    """Which cache a LocalModelNode entry belongs to."""
    return CacheRef(entry.get("namespace") or "", entry.get("modelName", ""))
