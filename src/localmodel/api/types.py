"""serving.kserve.io/v1alpha1 local model cache types, with exactly KServe's field names.

Fields KServe has are declared first in each model. Fields localmodel adds are marked
`additive`: they only ever appear in status, are optional, and are pruned harmlessly by the
apiserver when KServe's own CRDs are installed instead of ours.

Models use snake_case attributes with camelCase aliases; serialize with `to_k8s()`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from localmodel.api.quantity import QUANTITY_PATTERN

GROUP = "serving.kserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CLUSTER_CACHE_FINALIZER = "localmodel.kserve.io/finalizer"
NAMESPACE_CACHE_FINALIZER = "localmodelnamespacecache.kserve.io/finalizer"

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A resource.Quantity such as `10Gi`; parse it with `quantity.parse_quantity`."""

PreservedObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""An embedded core/v1 object spec (PV or PVC spec), validated by the apiserver when used."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True
    )

    def to_k8s(self) -> dict[str, Any]:
        """The JSON body Kubernetes expects: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class NodeStatus(str, Enum):
    """Per-node phase of a cache (`LocalModelCache.status.nodeStatus` values)."""

    NONE = ""
    NOT_READY = "NodeNotReady"
    DOWNLOAD_PENDING = "NodeDownloadPending"
    DOWNLOADING = "NodeDownloading"
    DOWNLOADED = "NodeDownloaded"
    DOWNLOAD_ERROR = "NodeDownloadError"


class ModelStatus(str, Enum):
    """Per-model phase on one node (`LocalModelNode.status.modelStatus` values)."""

    NONE = ""
    DOWNLOAD_PENDING = "ModelDownloadPending"
    DOWNLOADING = "ModelDownloading"
    DOWNLOADED = "ModelDownloaded"
    DOWNLOAD_ERROR = "ModelDownloadError"


_MODEL_TO_NODE = {
    ModelStatus.DOWNLOAD_PENDING: NodeStatus.DOWNLOAD_PENDING,
    ModelStatus.DOWNLOADING: NodeStatus.DOWNLOADING,
    ModelStatus.DOWNLOADED: NodeStatus.DOWNLOADED,
    ModelStatus.DOWNLOAD_ERROR: NodeStatus.DOWNLOAD_ERROR,
}


# keyed by the raw string: a cache's status maps every member node, so this runs 1000s of times
# per reconcile at scale, and constructing the Enum from its value each time dominated it
# (an Enum member hashes by its name, so members and plain strings are both keys)
_NODE_STATUS_BY_VALUE: dict[str | None, NodeStatus] = {
    **{m.value: n for m, n in _MODEL_TO_NODE.items()}, **_MODEL_TO_NODE}


def node_status_for(model_status: str | None) -> NodeStatus:
    """KServe's ModelStatus → NodeStatus mapping; anything unknown or missing is Pending."""
    return _NODE_STATUS_BY_VALUE.get(model_status, NodeStatus.DOWNLOAD_PENDING)


# --- shared pieces ---------------------------------------------------------------------------


class LocalModelStorageSpec(_Model):
    """Credentials for a download: a key of the storage-config secret and inline overrides."""

    key: str | None = None
    parameters: dict[str, str] | None = None


class NamespacedName(_Model):
    namespace: str | None = None
    name: str | None = None


class ModelCopies(_Model):
    """How many nodes of the cache's groups hold the model."""

    available: int | None = None
    total: int | None = None
    failed: int | None = None


# --- LocalModelCache / LocalModelNamespaceCache ------------------------------------------------


class LocalModelCacheSpec(_Model):
    source_model_uri: str = Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "StorageUri is immutable"}
            ]
        },
        description="URI of the model to cache. Immutable.",
    )
    model_size: Quantity = Field(description="Size of the model; used for capacity checks.")
    node_groups: list[str] = Field(
        min_length=1, description="LocalModelNodeGroups to cache on; the first is the default."
    )
    service_account_name: str | None = Field(
        default=None, description="ServiceAccount whose secrets hold the download credentials."
    )
    storage: LocalModelStorageSpec | None = None


class LocalModelCacheStatus(_Model):
    node_status: dict[str, NodeStatus] | None = None
    copies: ModelCopies | None = None
    inference_services: list[NamespacedName] | None = None
    llm_inference_services: list[NamespacedName] | None = None


class LocalModelCache(_Model):
    api_version: str = API_VERSION
    kind: str = "LocalModelCache"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LocalModelCacheSpec
    status: LocalModelCacheStatus | None = None


class LocalModelNamespaceCache(LocalModelCache):
    kind: str = "LocalModelNamespaceCache"


# --- LocalModelNodeGroup -------------------------------------------------------------------------


class LocalModelNodeGroupSpec(_Model):
    storage_limit: Quantity = Field(description="Disk budget for models on each node of the group.")
    persistent_volume_spec: PreservedObject = Field(
        description="core/v1 PersistentVolumeSpec; its nodeAffinity.required selects the nodes."
    )
    persistent_volume_claim_spec: PreservedObject = Field(
        description="core/v1 PersistentVolumeClaimSpec for the claims bound to that volume."
    )


class LocalModelNodeGroupStatus(_Model):
    used: Quantity | None = None
    available: Quantity | None = None


class LocalModelNodeGroup(_Model):
    api_version: str = API_VERSION
    kind: str = "LocalModelNodeGroup"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LocalModelNodeGroupSpec
    status: LocalModelNodeGroupStatus | None = None


# --- LocalModelNode --------------------------------------------------------------------------------


class LocalModelInfo(_Model):
    """One model a node must hold."""

    source_model_uri: str
    model_name: str = Field(description="Name of the cache that asked for this model.")
    namespace: str | None = Field(default=None, description='Cache namespace; "" for a cluster cache.')
    node_group: str | None = None
    service_account_name: str | None = None
    storage: LocalModelStorageSpec | None = None


class LocalModelNodeSpec(_Model):
    local_models: list[LocalModelInfo]


class ModelDetail(_Model):
    """additive: what the agent knows about one model beyond its phase."""

    storage_key: str | None = None
    bytes_done: int | None = Field(default=None, description="Bytes verified on disk so far.")
    bytes_total: int | None = Field(default=None, description="Size of the model in bytes.")
    files_done: int | None = None
    files_total: int | None = None
    bytes_per_second: int | None = None
    start_time: str | None = Field(default=None, description="RFC 3339 time the download began.")
    completion_time: str | None = None
    revision: str | None = Field(default=None, description="Resolved revision (e.g. HF commit).")
    digest: str | None = Field(default=None, description="sha256 over the manifest's file list.")
    reason: str | None = Field(default=None, description="CamelCase reason of the last failure.")
    message: str | None = None
    retry_at: str | None = None
    warning: str | None = Field(
        default=None,
        description="What the download went ahead without (e.g. a missing storage-config Secret).",
    )


class NodeDisk(_Model):
    """additive: the models filesystem of the node, in bytes."""

    capacity_bytes: int | None = None
    used_bytes: int | None = Field(default=None, description="Bytes held by cached models.")
    free_bytes: int | None = None


class LocalModelNodeStatus(_Model):
    model_status: dict[str, ModelStatus] | None = None
    # additive below
    model_details: dict[str, ModelDetail] | None = None
    disk: NodeDisk | None = None
    models_downloaded: int | None = None
    peer_endpoint: str | None = Field(
        default=None, description="URL where this node's agent serves verified models to peers."
    )
    observed_generation: int | None = None


class LocalModelNode(_Model):
    api_version: str = API_VERSION
    kind: str = "LocalModelNode"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: LocalModelNodeSpec
    status: LocalModelNodeStatus | None = None
