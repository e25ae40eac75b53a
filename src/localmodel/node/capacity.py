"""Capacity checks made before a download starts. Pure: the caller measures, this decides.

KServe declares `storageLimit` (LocalModelNodeGroup) and `modelSize` (LocalModelCache) but never
enforces either, so a full disk fails the download Job with no signal (kserve#6137). The agent
checks three budgets with the size the source lists, and refuses with a reason the status shows:

1. the cache's `modelSize`, when known: a model larger than declared breaks the controller's
   arithmetic, so it is refused rather than silently overrunning (ModelSizeExceeded);
2. the node group's `storageLimit`: every model of that group on this node, held or being
   written, plus this one (StorageLimitExceeded);
3. free space on the models filesystem, minus what other running downloads still have to write
   and a reserve that is never used (InsufficientSpace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from localmodel.api.quantity import approx_quantity
from localmodel.errors import (
    InsufficientSpaceError,
    ModelSizeExceededError,
    StorageLimitExceededError,
)


def bytes_on_disk(models: Iterable[tuple[int, int, frozenset[tuple[int, int, int]]]]) -> int:
    """The bytes a set of models holds on disk, given (bytes_total, linked_bytes, linked) per
    model (see `plan.Observed`): each model's own files, plus every file shared through the
    content store (hard links to one inode) once, however many models or paths hold it."""
    own = 0
    shared: dict[tuple[int, int], int] = {}
    for total, linked_bytes, linked in models:
        own += max(0, total - linked_bytes)
        for dev, ino, size in linked:
            shared[(dev, ino)] = size
    return own + sum(shared.values())


@dataclass(frozen=True)
class Budgets:
    """A model's budgets: what the cluster says (the backend fills the first two) and what this
    node holds (the reconciler adds the rest before the download starts)."""

    #: The largest modelSize any of the model's caches declares, when known.
    declared_bytes: int | None = None
    #: storageLimit of each node group the model's entries name (None = unknown).
    group_limits: Mapping[str, int | None] = field(default_factory=dict)
    #: The node directory each group's PersistentVolume mounts (None: not known); the agent
    #: refuses a group whose PV points elsewhere than its own host path (node/hostpath.py).
    group_paths: Mapping[str, str | None] = field(default_factory=dict)
    #: Bytes each of those groups already holds on this node in complete models (on disk:
    #: a file shared through the content store counts once).
    group_present_bytes: Mapping[str, int] = field(default_factory=dict)
    #: The content store files (st_dev, st_ino) each group's complete models hold: a new model
    #: that links them adds nothing to that group's bytes on disk.
    group_linked: Mapping[str, frozenset[tuple[int, int]]] = field(default_factory=dict)
    #: Bytes that must stay free on the models filesystem.
    keep_free_bytes: int = 0


@dataclass(frozen=True)
class CapacityRequest:
    """What one download needs and what the node has, in bytes."""

    #: Size of the whole model as the source lists it.
    model_bytes: int
    #: Bytes of this model already on disk (a resumable partial download, an older copy, files
    #: the content store holds that the download will link rather than write).
    present_bytes: int
    #: Free bytes on the models filesystem now.
    free_bytes: int
    #: Bytes other running downloads have yet to write.
    reserved_bytes: int = 0
    #: Bytes that must stay free.
    keep_free_bytes: int = 0
    #: The cache's declared modelSize, when known.
    declared_bytes: int | None = None
    #: The node group the entry names, and its storageLimit when known.
    group: str | None = None
    group_limit_bytes: int | None = None
    #: Bytes held or reserved on this node by the group's other models.
    group_used_bytes: int = 0
    #: Of model_bytes, the files the group's other models already hold (content store links):
    #: they add nothing to the group's bytes on disk.
    group_shared_bytes: int = 0

    @property
    def need_bytes(self) -> int:
        """What this download will still add to the disk."""
        return max(0, self.model_bytes - self.present_bytes)


def check_capacity(request: CapacityRequest) -> None:
    """Raise an InsufficientSpaceError subclass when the download must not start."""
    if request.declared_bytes is not None and request.model_bytes > request.declared_bytes:
        raise ModelSizeExceededError(
            f"the model is {approx_quantity(request.model_bytes)} but its cache declares modelSize "
            f"{approx_quantity(request.declared_bytes)}; raise modelSize to cache it"
        )
    if request.group_limit_bytes is not None:
        adds = max(0, request.model_bytes - request.group_shared_bytes)
        total = request.group_used_bytes + adds
        if total > request.group_limit_bytes:
            shared = (f", {approx_quantity(request.group_shared_bytes)} of it shared with the group's other models"
                      if request.group_shared_bytes else "")
            raise StorageLimitExceededError(
                f"node group {request.group!r} would hold {approx_quantity(total)} on this node "
                f"({approx_quantity(request.group_used_bytes)} already + {approx_quantity(request.model_bytes)}{shared}), "
                f"over its storageLimit {approx_quantity(request.group_limit_bytes)}"
            )
    usable = request.free_bytes - request.reserved_bytes - request.keep_free_bytes
    if request.need_bytes > usable:
        raise InsufficientSpaceError(
            f"the download needs {approx_quantity(request.need_bytes)} more but only {approx_quantity(max(usable, 0))} "
            f"is usable ({approx_quantity(request.free_bytes)} free, {approx_quantity(request.reserved_bytes)} promised "
            f"to other downloads, {approx_quantity(request.keep_free_bytes)} kept free)"
        )
