"""The cluster objects a cache lifecycle needs: a node group, labelled Ready Nodes, caches (the
controller itself runs as a child process: `localmodel.dev.controller_process`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from localmodel.kube import resources
from tests.controller.factories import group_obj
from tests.controller.harness import create_node


class CacheObjects:
    """Groups, Nodes and caches made by one test, deleted (best effort) at the end."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.caches: list[str] = []
        self.groups: list[str] = []
        self.nodes: list[str] = []

    def group(self, name: str) -> str:
        self.client.create(resources.LocalModelNodeGroup(group_obj(name, label="pool", value=name)))
        self.groups.append(name)
        return name

    def node(self, name: str, group: str) -> str:
        create_node(self.client, name, {"pool": group}, ready=True)
        self.nodes.append(name)
        return name

    def cache(self, name: str, uri: str, groups: list[str], size: str = "1Gi", **spec: Any) -> str:
        self.client.create(resources.LocalModelCache({
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
            "metadata": {"name": name},
            "spec": {"sourceModelUri": uri, "modelSize": size, "nodeGroups": groups, **spec}}))
        self.caches.append(name)
        return name

    def cache_status(self, name: str) -> Mapping[str, Any]:
        return dict(self.client.get(resources.LocalModelCache, name).get("status") or {})

    def copies(self, name: str) -> Mapping[str, Any]:
        return dict(self.cache_status(name).get("copies") or {})

    def close(self) -> None:
        for name in self.caches:
            try:  # the controller may be gone: do not leave caches stuck on its finalizer
                self.client.patch(resources.LocalModelCache, name, {"metadata": {"finalizers": None}},
                                  patch_type=PatchType.MERGE)
            except ApiError:
                pass
            _delete(self.client, resources.LocalModelCache, name)
        for name in self.groups:
            _delete(self.client, resources.LocalModelNodeGroup, name)
        for name in self.nodes:
            _delete(self.client, Node, name)


def _delete(client: Client, resource: Any, name: str) -> None:
    try:
        client.delete(resource, name)
    except ApiError:
        pass
