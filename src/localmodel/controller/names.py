"""Names, labels and annotations: KServe's (kept byte-for-byte) and localmodel's own.

KServe derives PV/PVC names from the cache, group and namespace; a cluster switching from KServe
keeps using the objects KServe created, so these formulas must not change.
"""

from __future__ import annotations

from typing import NamedTuple

from localmodel.api.keys import storage_key

# --- KServe's labels and annotations on consumers (I3, C10) -------------------------------------
LOCAL_MODEL_LABEL = "internal.serving.kserve.io/localmodel"
LOCAL_MODEL_NAMESPACE_LABEL = "internal.serving.kserve.io/localmodel-namespace"
LOCAL_MODEL_SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/localmodel-sourceuri"
LOCAL_MODEL_PVC_NAME_ANNOTATION = "internal.serving.kserve.io/localmodel-pvc-name"
NODE_GROUP_ANNOTATION = "serving.kserve.io/nodegroup"
DISABLE_LOCAL_MODEL_ANNOTATION = "serving.kserve.io/disable-localmodel"

LEADER_LOCK_NAME = "kserve-local-model-manager-leader-lock"

# --- localmodel's own -----------------------------------------------------------------------------
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "localmodel-controller"
# On PV/PVCs we create: which cache ("ns/name", "" ns for cluster caches), group and role.
CACHE_ANNOTATION = "localmodel.kserve.io/cache"
GROUP_ANNOTATION = "localmodel.kserve.io/node-group"
ROLE_ANNOTATION = "localmodel.kserve.io/volume-role"
ROLE_DOWNLOAD = "download"
ROLE_SERVING = "serving"

# Cache-aware scheduling: a node holding the complete model `<storageKey>` carries
# `model.localmodel.kserve.io/<storageKey>=true`. The storage key (16 hex digits) keeps the key
# within the 63-character name limit whatever the URI, and is the folder name on disk.
NODE_MODEL_LABEL_PREFIX = "model.localmodel.kserve.io/"
NODE_MODEL_LABEL_VALUE = "true"

# Pod webhook: a pod labelled with a cache name gets that model mounted read-only.
POD_CACHE_LABEL = "localmodel.kserve.io/cache"
POD_CACHE_NAMESPACE_LABEL = "localmodel.kserve.io/cache-namespace"  # set by the webhook
POD_MOUNT_PATH_ANNOTATION = "localmodel.kserve.io/mount-path"
POD_CONTAINERS_ANNOTATION = "localmodel.kserve.io/containers"
POD_NODE_AFFINITY_ANNOTATION = "localmodel.kserve.io/node-affinity"  # required|preferred|none
POD_MUTATED_ANNOTATION = "localmodel.kserve.io/mounted"
POD_VOLUME_NAME = "localmodel-cache"
DEFAULT_POD_MOUNT_PATH = "/mnt/models"


class CacheRef(NamedTuple):
    """A cache's identity: namespace is "" for a cluster-scoped LocalModelCache."""

    namespace: str
    name: str

    @property
    def namespaced(self) -> bool:
        return bool(self.namespace)

    @property
    def kind(self) -> str:
        return "LocalModelNamespaceCache" if self.namespace else "LocalModelCache"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def parse(cls, text: str) -> CacheRef:
        namespace, _, name = text.rpartition("/")
        return cls(namespace, name)


def download_pv_name(cache: CacheRef, group: str) -> str:
    if cache.namespaced:
        return f"{cache.name}-{group}-{cache.namespace}-download"
    return f"{cache.name}-{group}-download"


def download_pvc_name(cache: CacheRef, group: str) -> str:
    if cache.namespaced:
        return f"{cache.name}-{group}-{cache.namespace}-download"
    return f"{cache.name}-{group}"


def serving_pvc_name(cache: CacheRef, group: str) -> str:
    return f"{cache.name}-{group}"


def serving_pv_name(cache: CacheRef, group: str, namespace: str) -> str:
    return f"{cache.name}-{group}-{namespace}"


def node_model_label(uri: str) -> str:
    """The node label key saying the model at `uri` is complete on that node."""
    return NODE_MODEL_LABEL_PREFIX + storage_key(uri)
