"""The controller's view of the cluster: informers, indexes, and which keys each event dirties.

Event handlers only update indexes and enqueue keys; all decisions happen in the reconcilers.
Three queues: caches (CacheRef), nodes (node name: LocalModelNode entries and labels) and groups
(group name: status). Handlers filter out changes that cannot alter a plan (node heartbeats, our
own status writes, agent progress), which keeps 1000 nodes × 50 caches cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lightkube import ALL_NS, AsyncClient
from lightkube import operators as op
from lightkube.resources.core_v1 import ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod

from localmodel.api.keys import status_key
from localmodel.controller import names
from localmodel.controller.names import CacheRef
from localmodel.controller.plan_volumes import PV, PVC, VolumeKey
from localmodel.controller.state import Membership, RefIndex
from localmodel.controller.views import Cache, Consumer, Group, NodeInfo, entry_ref
from localmodel.kube import resources
from localmodel.kube.config import CONFIGMAP_NAME, LocalModelConfig, parse_local_model_config
from localmodel.kube.informer import Informer

Raw = dict[str, Any]


def _slim_node(obj: Raw) -> Raw:
    """Keep name, labels and the Ready condition: a Node's status is large and changes often."""
    meta = obj.get("metadata") or {}
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    return {"metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                         "resourceVersion": meta.get("resourceVersion")},
            "status": {"conditions": [{"type": "Ready", "status": c.get("status")} for c in conditions]}}


def _slim_meta(obj: Raw) -> Raw:
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "labels", "annotations", "resourceVersion", "uid", "ownerReferences")
    return {"metadata": {k: meta[k] for k in keep if k in meta}}


def _isvc_ref(obj: Raw | None) -> set[CacheRef]:
    """The cache an InferenceService / LLMInferenceService uses, from KServe's labels."""
    if not obj:
        return set()
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = labels.get(names.LOCAL_MODEL_LABEL)
    if not name:
        return set()
    namespace = labels.get(names.LOCAL_MODEL_NAMESPACE_LABEL)
    if namespace is None:
        return {CacheRef("", name)}
    # KServe only counts a namespaced cache for consumers in its own namespace
    return {CacheRef(namespace, name)} if namespace == meta.get("namespace") else set()


def _pod_ref(obj: Raw | None) -> set[CacheRef]:
    if not obj:
        return set()
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = labels.get(names.POD_CACHE_LABEL)
    if not name or names.POD_MUTATED_ANNOTATION not in (meta.get("annotations") or {}):
        return set()
    namespace = labels.get(names.POD_CACHE_NAMESPACE_LABEL)
    if namespace is None:
        return {CacheRef("", name)}
    return {CacheRef(namespace, name)} if namespace == meta.get("namespace") else set()


#: Informer index of caches by the node groups their spec names.
GROUPS = "nodeGroups"


def _node_groups(obj: Raw) -> list[str]:
    return list((_spec(obj) or {}).get("nodeGroups") or [])


def _spec(obj: Raw | None) -> Any:
    return (obj or {}).get("spec")


def _deleting(obj: Raw | None) -> bool:
    return bool(((obj or {}).get("metadata") or {}).get("deletionTimestamp"))


@dataclass
class Queues:
    cache: Callable[[CacheRef], None]
    node: Callable[[str], None]
    group: Callable[[str], None]
    # a group's status aggregates every member's report: during a burst of agent reports it is
    # recomputed once per window instead of once per report (O(members²) at 3000 nodes)
    group_batched: Callable[[str], None]
    # a cache's status maps every member node (a large object to write): agent reports refresh it
    # at once when it is idle, and at most once per interval while they keep coming
    cache_spaced: Callable[[CacheRef], None]


class ClusterView:
    def __init__(self, client: AsyncClient, pod_namespace: str, queues: Queues) -> None:
        self.pod_namespace = pod_namespace
        self.queues = queues
        self.membership = Membership()
        self.entries = RefIndex[str]()  # cache → LocalModelNodes listing it
        self.consumers = RefIndex[tuple[str, str, str]]()  # cache → (kind, ns, name)
        self.volumes = RefIndex[VolumeKey]()  # cache → PV/PVCs we created for it
        managed = {names.MANAGED_BY_LABEL: names.MANAGED_BY_VALUE}
        mk = Informer
        self.nodes = mk(client, Node, name="nodes", transform=_slim_node)
        self.groups = mk(client, resources.LocalModelNodeGroup, name="localmodelnodegroups")
        self.caches = mk(client, resources.LocalModelCache, name="localmodelcaches")
        self.ns_caches = mk(client, resources.LocalModelNamespaceCache, name="localmodelnamespacecaches",
                            namespace=ALL_NS)
        self.lmns = mk(client, resources.LocalModelNode, name="localmodelnodes")
        self.pvs = mk(client, PersistentVolume, name="persistentvolumes", labels=managed, transform=_slim_meta)
        self.pvcs = mk(client, PersistentVolumeClaim, name="persistentvolumeclaims", labels=managed,
                       transform=_slim_meta, namespace=ALL_NS)
        consumer = {names.LOCAL_MODEL_LABEL: op.exists()}
        self.isvcs = mk(client, resources.InferenceService, name="inferenceservices", labels=consumer,
                        transform=_slim_meta, namespace=ALL_NS)
        self.llmisvcs = mk(client, resources.LLMInferenceService, name="llminferenceservices", labels=consumer,
                           transform=_slim_meta, namespace=ALL_NS)
        self.pods = mk(client, Pod, name="pods", labels={names.POD_CACHE_LABEL: op.exists()}, transform=_slim_meta,
                       namespace=ALL_NS)
        self.configmaps = mk(client, ConfigMap, name="inferenceservice-config", namespace=pod_namespace,
                             fields={"metadata.name": CONFIGMAP_NAME})
        for informer in (self.caches, self.ns_caches):
            informer.add_index(GROUPS, _node_groups)
        self.nodes.add_handler(self._on_node)
        self.groups.add_handler(self._on_group)
        self.caches.add_handler(self._on_cache)
        self.ns_caches.add_handler(self._on_cache)
        self.lmns.add_handler(self._on_lmn)
        self.pvs.add_handler(self._on_volume(PV))
        self.pvcs.add_handler(self._on_volume(PVC))
        self.isvcs.add_handler(self._on_consumer("InferenceService", _isvc_ref))
        self.llmisvcs.add_handler(self._on_consumer("LLMInferenceService", _isvc_ref))
        self.pods.add_handler(self._on_consumer("Pod", _pod_ref))
        self.configmaps.add_handler(self._on_config)

    @property
    def informers(self) -> list[Informer]:
        return [self.nodes, self.groups, self.caches, self.ns_caches, self.lmns, self.pvs, self.pvcs,
                self.isvcs, self.llmisvcs, self.pods, self.configmaps]

    # --- reads --------------------------------------------------------------------------------

    def cache_object(self, ref: CacheRef) -> Raw | None:
        store = self.ns_caches if ref.namespaced else self.caches
        return store.get(ref.name, ref.namespace)

    def cache(self, ref: CacheRef) -> Cache | None:
        obj = self.cache_object(ref)
        return Cache.from_k8s(obj) if obj else None

    def all_caches(self) -> list[Cache]:
        return [Cache.from_k8s(o) for o in (*self.caches.store.values(), *self.ns_caches.store.values())]

    def cluster_caches(self) -> list[Cache]:
        return [Cache.from_k8s(o) for o in self.caches.store.values()]

    def namespace_caches(self, namespace: str) -> list[Cache]:
        return [Cache.from_k8s(o) for (ns, _), o in self.ns_caches.store.items() if ns == namespace]

    def group(self, name: str) -> Group | None:
        obj = self.groups.get(name)
        return Group.from_k8s(obj) if obj else None

    def all_groups(self) -> dict[str, Group]:
        return {name: Group.from_k8s(o) for (_, name), o in self.groups.store.items()}

    def caches_in_group(self, group: str) -> set[CacheRef]:
        """Every cache, cluster-wide or namespaced, that names `group` in spec.nodeGroups."""
        return {CacheRef(namespace, name) for informer in (self.caches, self.ns_caches)
                for namespace, name in informer.keys_by_index(GROUPS, group)}

    def caches_for_groups(self, groups: Iterable[str]) -> list[Cache]:
        refs: set[CacheRef] = set()
        for group in groups:
            refs |= self.caches_in_group(group)
        found = (self.cache(ref) for ref in sorted(refs))
        return [c for c in found if c is not None]

    def config(self) -> LocalModelConfig:
        """C1: the `localModel` settings; a missing ConfigMap or key raises ConfigError."""
        obj = self.configmaps.get(CONFIGMAP_NAME, self.pod_namespace)
        return parse_local_model_config((obj or {}).get("data"))

    def model_status(self, node: str) -> Mapping[str, Any] | None:
        return ((self.lmns.get(node) or {}).get("status") or {}).get("modelStatus")

    def consumers_of(self, ref: CacheRef, kind: str) -> list[Consumer]:
        store = {"InferenceService": self.isvcs, "LLMInferenceService": self.llmisvcs, "Pod": self.pods}[kind]
        out = []
        for item_kind, namespace, name in sorted(self.consumers.get(ref)):
            obj = store.get(name, namespace) if item_kind == kind else None
            if obj is not None:
                out.append(Consumer.from_k8s(kind, obj))
        return out

    def volume_exists(self, key: VolumeKey) -> bool:
        store = self.pvs if key.kind == PV else self.pvcs
        return store.get(key.name, key.namespace) is not None

    # --- event handlers -------------------------------------------------------------------------

    def _on_node(self, event: str, old: Raw | None, new: Raw | None) -> None:
        name = ((new or old or {}).get("metadata") or {}).get("name", "")
        before = NodeInfo.from_k8s(old) if old else None
        after = NodeInfo.from_k8s(new) if new else None
        if before == after:
            return  # a heartbeat or a change to fields we do not read
        changed_groups = self.membership.set_node(name, after)
        self.queues.node(name)
        # readiness, arrival and departure change nodeStatus of every group the node is in
        touched = set(changed_groups)
        if before is None or after is None or before.ready != after.ready:
            touched |= self.membership.groups_of(name) | changed_groups
        for group in touched:
            self.queues.group(group)
            for ref in self.caches_in_group(group):
                self.queues.cache(ref)

    def _on_group(self, event: str, old: Raw | None, new: Raw | None) -> None:
        name = ((new or old or {}).get("metadata") or {}).get("name", "")
        self.queues.group(name)
        if event == "MODIFIED" and _spec(old) == _spec(new):
            return  # our own status write
        group = Group.from_k8s(new) if new else None
        moved = self.membership.set_group(name, group.terms if group else None, present=new is not None)
        for node in moved:
            self.queues.node(node)
        for ref in self.caches_in_group(name):
            self.queues.cache(ref)

    def _on_cache(self, event: str, old: Raw | None, new: Raw | None) -> None:
        obj = new or old or {}
        meta = obj.get("metadata") or {}
        ref = CacheRef(meta.get("namespace") or "", meta.get("name", ""))
        if event == "MODIFIED" and _spec(old) == _spec(new) and _deleting(old) == _deleting(new) \
                and (old or {}).get("metadata", {}).get("finalizers") == meta.get("finalizers"):
            return  # our own status write
        old_groups = set(_spec(old).get("nodeGroups") or []) if old else set()
        new_groups = set(_spec(new).get("nodeGroups") or []) if new else set()
        self.queues.cache(ref)
        if event != "MODIFIED" or _spec(old) != _spec(new) or _deleting(old) != _deleting(new):
            nodes = set(self.entries.get(ref))
            for group in old_groups | new_groups:
                nodes |= self.membership.members(group)
            for node in nodes:
                self.queues.node(node)
            for group in old_groups | new_groups:
                self.queues.group(group)

    def _on_lmn(self, event: str, old: Raw | None, new: Raw | None) -> None:
        name = ((new or old or {}).get("metadata") or {}).get("name", "")
        old_entries = (_spec(old) or {}).get("localModels") or []
        new_entries = (_spec(new) or {}).get("localModels") or []
        self.entries.set(name, [entry_ref(e) for e in new_entries])
        old_status = (old or {}).get("status") or {}
        new_status = (new or {}).get("status") or {}
        old_models = old_status.get("modelStatus") or {}
        new_models = new_status.get("modelStatus") or {}
        if event != "MODIFIED" or old_entries != new_entries or old_models != new_models:
            self.queues.node(name)  # entries (deleted object) or model labels
        listed_before = {entry_ref(e) for e in old_entries}
        listed_now = {entry_ref(e) for e in new_entries}
        for ref in listed_before | listed_now:
            key = status_key(ref.name, ref.namespace)
            if old_models.get(key) != new_models.get(key):
                self.queues.cache_spaced(ref)  # its nodeStatus on this node
            elif (ref in listed_before) != (ref in listed_now) and self._awaits_entries(ref):
                # a live cache's status does not depend on which nodes list it (only on members and
                # their modelStatus): waking every cache of a group for every LocalModelNode created
                # cost 17 000 no-op reconciles at 1000 nodes. A deleting one waits for the last holder.
                self.queues.cache(ref)
        if any(old_status.get(f) != new_status.get(f) for f in ("disk", "modelDetails", "modelStatus")):
            # group status is computed from its members' reports only; a LocalModelNode created
            # without status, or our entry writes, cannot change it
            for group in self.membership.groups_of(name):
                self.queues.group_batched(group)

    def _awaits_entries(self, ref: CacheRef) -> bool:
        """A cache whose reconcile depends on which LocalModelNodes list it: deleting or gone."""
        obj = self.cache_object(ref)
        return obj is None or _deleting(obj)

    def _on_volume(self, kind: str) -> Callable[[str, Raw | None, Raw | None], None]:
        def handler(event: str, old: Raw | None, new: Raw | None) -> None:
            obj = new or old or {}
            meta = obj.get("metadata") or {}
            owner = (meta.get("annotations") or {}).get(names.CACHE_ANNOTATION)
            if owner is None:
                return
            ref = CacheRef.parse(owner)
            key = VolumeKey(kind, meta.get("namespace") or "", meta.get("name", ""))
            self.volumes.set(key, [ref] if new is not None else [])
            if event == "DELETED":
                self.queues.cache(ref)  # recreate it if still wanted
        return handler

    def _on_consumer(self, kind: str, refs_of: Callable[[Raw | None], set[CacheRef]]
                     ) -> Callable[[str, Raw | None, Raw | None], None]:
        def handler(event: str, old: Raw | None, new: Raw | None) -> None:
            meta = (new or old or {}).get("metadata") or {}
            item = (kind, meta.get("namespace", ""), meta.get("name", ""))
            now = refs_of(new)
            self.consumers.set(item, now)
            before = refs_of(old)
            old_group = ((old or {}).get("metadata") or {}).get("annotations", {}).get(names.NODE_GROUP_ANNOTATION)
            new_group = meta.get("annotations", {}).get(names.NODE_GROUP_ANNOTATION) if new else None
            if event != "MODIFIED" or before != now or old_group != new_group:
                for ref in before | now:
                    self.queues.cache(ref)
        return handler

    def _on_config(self, event: str, old: Raw | None, new: Raw | None) -> None:
        for cache in self.all_caches():
            self.queues.cache(cache.ref)
