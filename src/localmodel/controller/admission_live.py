"""Live reads for admission: what the webhooks ask the apiserver when the informers may lag.

The informers see a write only when its watch event arrives. A decision that would *allow*
because the cache lacks an object (no other cache with this URI, room left in the group, no
consumer) or *refuse* because it lacks one (no such group, no such cache) is wrong whenever that
object was written a moment ago: two caches created back to back are both admitted, a Pod created
right after its cache is refused. So every such decision is confirmed with a live read before it
is given; the informers still answer the common case for free (a duplicate, a present group).

Caches and groups are few (one per model, one per node pool): a list per cache admission is cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lightkube import ALL_NS, ApiError, AsyncClient

from localmodel.controller.names import LOCAL_MODEL_LABEL, CacheRef
from localmodel.controller.views import Cache, Group
from localmodel.kube import resources
from localmodel.kube.client import status_code

Consumers = list[tuple[str, Mapping[str, Any]]]

_CONSUMER_KINDS = (("InferenceService", resources.InferenceService),
                   ("LLMInferenceService", resources.LLMInferenceService))


def _as_dict(obj: Any) -> Mapping[str, Any]:
    return obj if isinstance(obj, Mapping) else obj.to_dict()


class LiveReads:
    """Uncached reads through the controller's client."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def cluster_caches(self) -> list[Cache]:
        return [Cache.from_k8s(_as_dict(o)) async for o in self.client.list(resources.LocalModelCache)]

    async def all_caches(self) -> list[Cache]:
        namespaced = [Cache.from_k8s(_as_dict(o)) async for o in
                      self.client.list(resources.LocalModelNamespaceCache, namespace=ALL_NS)]
        return [*await self.cluster_caches(), *namespaced]

    async def groups(self) -> dict[str, Group]:
        groups = [Group.from_k8s(_as_dict(o)) async for o in self.client.list(resources.LocalModelNodeGroup)]
        return {g.name: g for g in groups}

    async def cache(self, ref: CacheRef) -> Cache | None:
        try:
            if ref.namespaced:
                obj = await self.client.get(resources.LocalModelNamespaceCache, ref.name, namespace=ref.namespace)
            else:
                obj = await self.client.get(resources.LocalModelCache, ref.name)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return Cache.from_k8s(_as_dict(obj))

    async def namespace_caches(self, namespace: str) -> list[Cache]:
        return [Cache.from_k8s(_as_dict(o)) async for o in
                self.client.list(resources.LocalModelNamespaceCache, namespace=namespace)]

    async def labelled_consumers(self, cache: Cache) -> Consumers:
        """InferenceServices and LLMInferenceServices carrying the cache's label, in any namespace.

        The cache's status lists consumers only once the controller has seen them; the label is
        set by the defaulting webhook when the consumer is created. A kind whose CRD is not
        installed has no consumers: the apiserver answers its path with a plain-text 404, which
        lightkube raises as the HTTP library's error rather than an ApiError (`status_code`
        reads both), and a cache must stay deletable on a cluster without KServe.
        """
        found: Consumers = []
        for kind, resource in _CONSUMER_KINDS:
            try:
                async for obj in self.client.list(resource, namespace=ALL_NS,
                                                  labels={LOCAL_MODEL_LABEL: cache.ref.name}):
                    found.append((kind, _as_dict(obj)))
            except Exception as error:
                if status_code(error) == 404:
                    continue
                raise
        return found
