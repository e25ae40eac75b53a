"""The three reconcilers: observe (informer stores) → plan (pure) → apply the difference.

- `reconcile_cache`: finalizer, download and serving PV/PVCs, consumers, and the status written
  by one merge patch to /status; on deletion, waits for every LocalModelNode to drop the cache,
  deletes its volumes and removes the finalizer (even when its groups are gone, #6154).
- `reconcile_node`: the LocalModelNode's entries (created when absent, AlreadyExists handled),
  the node's cache-aware labels, and deletion of the LocalModelNode of a deleted Node (#6159).
- `reconcile_group`: LocalModelNodeGroup status from the agents' reports (#6137).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Node, PersistentVolume, PersistentVolumeClaim
from lightkube.types import PatchType

from localmodel.api.types import CLUSTER_CACHE_FINALIZER, NAMESPACE_CACHE_FINALIZER
from localmodel.controller import plan_volumes
from localmodel.controller.cluster import ClusterView
from localmodel.controller.events import EventRecorder
from localmodel.controller.names import CacheRef
from localmodel.kube.patches import merge_patch
from localmodel.controller.plan_labels import desired_model_labels, label_patch
from localmodel.controller.plan_events import CacheEvent, missing_group_event, status_events
from localmodel.controller.plan_groups import group_status
from localmodel.controller.plan_nodes import entries_changed, plan_entries, wanted_entries
from localmodel.controller.plan_status import desired_status, node_statuses
from localmodel.controller.plan_volumes import PV, Volume, VolumeKey
from localmodel.controller.views import Cache, NodeInfo
from localmodel.kube import resources

log = logging.getLogger(__name__)


@dataclass
class Reconcilers:
    client: AsyncClient
    view: ClusterView
    events: EventRecorder | None = None
    # the missing node groups last reported per cache, so NodeGroupNotFound is recorded once
    _missing_groups: dict[CacheRef, frozenset[str]] = field(default_factory=dict)

    # --- caches ---------------------------------------------------------------------------------

    def _resource(self, ref: CacheRef) -> Any:
        return resources.LocalModelNamespaceCache if ref.namespaced else resources.LocalModelCache

    async def _patch_cache(self, cache: Cache, body: dict[str, Any], status: bool = False) -> None:
        res = self._resource(cache.ref)
        if status:
            res = res.Status
        updated = await self.client.patch(res, cache.ref.name, body, namespace=cache.ref.namespace or None,
                                          patch_type=PatchType.MERGE)
        store = self.view.ns_caches if cache.ref.namespaced else self.view.caches
        store.write_through(updated)

    async def reconcile_cache(self, ref: CacheRef) -> None:
        cache = self.view.cache(ref)
        if cache is None:
            self._missing_groups.pop(ref, None)
            for node in self.view.entries.get(ref):
                self.view.queues.node(node)  # a cache deleted without our finalizer: drop its entries
            return
        config = self.view.config()  # C1: raises ConfigError, retried with backoff
        finalizer = NAMESPACE_CACHE_FINALIZER if ref.namespaced else CLUSTER_CACHE_FINALIZER
        groups = {name: g for name in cache.node_groups if (g := self.view.group(name)) is not None}
        missing = [name for name in cache.node_groups if name not in groups]

        if cache.deleting:
            await self._finish_deletion(cache, finalizer, config.job_namespace)
            return
        if finalizer not in cache.finalizers:
            await self._patch_cache(cache, {"metadata": {"finalizers": [*cache.finalizers, finalizer],
                                                         "resourceVersion": cache.resource_version}})

        isvcs = self.view.consumers_of(ref, "InferenceService")
        llmisvcs = self.view.consumers_of(ref, "LLMInferenceService")
        existing = [groups[name] for name in cache.node_groups if name in groups]
        desired: list[Volume] = plan_volumes.download_volumes(cache, existing, config.job_namespace)
        if not config.disable_volume_management:
            pods = self.view.consumers_of(ref, "Pod")
            used = plan_volumes.consumer_groups(cache, [*isvcs, *llmisvcs, *pods])
            desired += plan_volumes.serving_volumes(cache, groups, used)
        await self._apply_volumes(cache, desired, config.job_namespace)

        members = self.view.membership.member_nodes(existing_name for existing_name in groups)
        status = desired_status(node_statuses(cache, members, self.view.model_status), isvcs, llmisvcs)
        patch = merge_patch(dict(cache.status), status)
        if patch:
            await self._patch_cache(cache, {"status": patch}, status=True)
            for event in status_events(cache.status, status, lambda node: self._model_detail(node, cache)):
                await self._record(cache, event)
        missing_event = missing_group_event(self._missing_groups.get(ref), missing)
        self._missing_groups[ref] = frozenset(missing)
        if missing_event is not None:
            await self._record(cache, missing_event)

    def _model_detail(self, node: str, cache: Cache) -> dict[str, Any] | None:
        details = ((self.view.lmns.get(node) or {}).get("status") or {}).get("modelDetails") or {}
        return details.get(cache.status_key)

    async def _record(self, cache: Cache, event: CacheEvent) -> None:
        if self.events is not None:
            await self.events.record(cache, event)
        else:
            log.info("%s %s: %s: %s", cache.ref.kind, cache.ref, event.reason, event.message)

    async def _apply_volumes(self, cache: Cache, desired: list[Volume], job_namespace: str) -> None:
        for volume in desired:
            if not self.view.volume_exists(volume.key):
                await self._create_volume(volume)
        owned = self.view.volumes.get(cache.ref)
        previous = plan_volumes.previous_consumer_namespaces(cache.status)
        for key in plan_volumes.volumes_to_delete(cache, owned, desired, previous, job_namespace):
            await self._delete_volume(key)

    async def _create_volume(self, volume: Volume) -> None:
        res = PersistentVolume if volume.key.kind == PV else PersistentVolumeClaim
        try:
            created = await self.client.create(res.from_dict(dict(volume.body)),
                                               namespace=volume.key.namespace or None)
        except ApiError as error:
            if error.status.code == 409:
                return  # exists (created by KServe or by us a moment ago): never updated, as in KServe
            raise
        (self.view.pvs if volume.key.kind == PV else self.view.pvcs).write_through(created)
        log.info("created %s %s", volume.key.kind, "/".join(filter(None, (volume.key.namespace, volume.key.name))))

    async def _delete_volume(self, key: VolumeKey) -> None:
        res = PersistentVolume if key.kind == PV else PersistentVolumeClaim
        try:
            await self.client.delete(res, key.name, namespace=key.namespace or None)
            log.info("deleted %s %s", key.kind, "/".join(filter(None, (key.namespace, key.name))))
        except ApiError as error:
            if error.status.code != 404:
                raise

    async def _finish_deletion(self, cache: Cache, finalizer: str, job_namespace: str) -> None:
        if finalizer not in cache.finalizers:
            return
        holders = self.view.entries.get(cache.ref)
        if holders:
            # each LocalModelNode drops the entry in its own reconcile; their events bring us back
            for node in holders:
                self.view.queues.node(node)
            return
        owned = self.view.volumes.get(cache.ref)
        previous = plan_volumes.previous_consumer_namespaces(cache.status)
        for key in plan_volumes.volumes_to_delete(cache, owned, [], previous, job_namespace):
            await self._delete_volume(key)
        remaining = [f for f in cache.finalizers if f != finalizer]
        await self._patch_cache(cache, {"metadata": {"finalizers": remaining or None,
                                                     "resourceVersion": cache.resource_version}})
        log.info("%s %s: cleaned up, finalizer removed", cache.ref.kind, cache.ref)

    # --- nodes ----------------------------------------------------------------------------------

    async def reconcile_node(self, name: str) -> None:
        node_obj = self.view.nodes.get(name)
        lmn = self.view.lmns.get(name)
        if node_obj is None:
            if lmn is not None:
                await self._delete_orphan(name)
            return
        node = NodeInfo.from_k8s(node_obj)
        groups_of = sorted(self.view.membership.groups_of(name))
        current = ((lmn or {}).get("spec") or {}).get("localModels") or []
        planned = plan_entries(current, wanted_entries(groups_of, self.view.caches_for_groups(groups_of)),
                               node.ready)
        if lmn is None:
            if planned:
                await self._create_lmn(name, planned)
        elif entries_changed(current, planned):
            rv = (lmn.get("metadata") or {}).get("resourceVersion")
            updated = await self.client.patch(
                resources.LocalModelNode, name,
                {"metadata": {"resourceVersion": rv}, "spec": {"localModels": planned}},
                patch_type=PatchType.MERGE)
            self.view.lmns.write_through(updated)
        labels = label_patch(node.labels, desired_model_labels(self.view.lmns.get(name)))
        if labels:
            updated_node = await self.client.patch(Node, name, {"metadata": {"labels": labels}},
                                                   patch_type=PatchType.MERGE)
            self.view.nodes.write_through(updated_node)

    async def _create_lmn(self, name: str, entries: list[dict[str, Any]]) -> None:
        body = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
                "metadata": {"name": name}, "spec": {"localModels": entries}}
        try:
            created = await self.client.create(resources.LocalModelNode(body))
        except ApiError as error:
            if error.status.code != 409:
                raise
            # AlreadyExists (#5777): another writer won; merge our entries into what is there
            existing = (await self.client.get(resources.LocalModelNode, name))
            self.view.lmns.write_through(existing)
            raise RetryNow(f"LocalModelNode {name} already exists") from error
        self.view.lmns.write_through(created)

    async def _delete_orphan(self, name: str) -> None:
        try:
            await self.client.get(Node, name)
            return  # the informer is behind: the node exists
        except ApiError as error:
            if error.status.code != 404:
                raise
        try:
            await self.client.delete(resources.LocalModelNode, name)
            log.info("deleted LocalModelNode %s: its Node is gone", name)
        except ApiError as error:
            if error.status.code != 404:
                raise

    # --- groups ---------------------------------------------------------------------------------

    async def reconcile_group(self, name: str) -> None:
        obj = self.view.groups.get(name)
        if obj is None:
            return
        group = self.view.group(name)
        assert group is not None
        members = sorted(self.view.membership.members(name))
        status = group_status(group, [self.view.lmns.get(n) for n in members])
        patch = merge_patch(dict(group.status), status)
        if patch:
            updated = await self.client.patch(resources.LocalModelNodeGroup, name, {"status": patch},
                                              patch_type=PatchType.MERGE)
            self.view.groups.write_through(updated)


class RetryNow(Exception):
    """The reconcile learned something new (e.g. a lost create race): run it again at once."""
