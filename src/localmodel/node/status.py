"""LocalModelNode status: the body, the merge patch from what the server has, and when to write.

Pure. KServe's agent replaces `status.modelStatus` with Update, several times a pass. We send one
JSON merge patch to the /status subresource, only with what changed: keys that disappeared are
sent as null (RFC 7386), so a removed model's status key goes away.

Progress alone (bytes, rate, disk figures) changes every second during a download; such changes
are written at most every `progress_interval` seconds, while a phase, a reason or a key that
appears or disappears is written at once.

With KServe's CRDs installed the apiserver prunes our additive fields (modelDetails, disk,
modelsDownloaded, observedGeneration). The caller notices that in the patch response and from
then on compares and sends the KServe fields only, so a pruned field never looks "changed".
Every `PRUNE_RECHECK_PASSES` resync periods it sends the whole status once more: when
localmodel's CRDs have replaced KServe's meanwhile (an upgrade while agents run), the fields
are kept and the agent writes them from then on, without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from localmodel.api.types import (
    LocalModelNodeStatus,
    ModelDetail,
    ModelStatus,
    NodeDisk,
)
from localmodel.kube.patches import merge_patch

#: Status fields KServe's CRD knows; everything else is localmodel's and may be pruned.
KSERVE_STATUS_FIELDS = frozenset({"modelStatus"})
#: After this many resync periods (KServe's default: 60 s, so 10 min) an agent that found its
#: additive fields pruned sends them again, to see whether the CRDs changed (a no-op write
#: for the apiserver while they still prune).
PRUNE_RECHECK_PASSES = 10
#: Fields that move continuously and are written at a limited rate.
_VOLATILE_DETAIL_FIELDS = frozenset({"bytesDone", "filesDone", "bytesPerSecond"})
_VOLATILE_STATUS_FIELDS = frozenset({"disk"})


def build_status(
    model_status: Mapping[str, ModelStatus],
    model_details: Mapping[str, ModelDetail],
    *,
    disk: NodeDisk | None,
    observed_generation: int | None,
    peer_endpoint: str | None = None,
) -> dict[str, Any]:
    """The full status body (camelCase JSON)."""
    downloaded = sum(1 for phase in model_status.values() if phase == ModelStatus.DOWNLOADED)
    status = LocalModelNodeStatus(
        model_status=dict(model_status),
        model_details=dict(model_details),
        disk=disk,
        models_downloaded=downloaded,
        peer_endpoint=peer_endpoint,
        observed_generation=observed_generation,
    )
    body = status.to_k8s()
    # An empty map must still be sent: it is how the last model's key disappears.
    body["modelStatus"] = {k: ModelStatus(v).value for k, v in model_status.items()}
    body["modelDetails"] = {k: d.to_k8s() for k, d in model_details.items()}
    return body


def coarse_free_bytes(free: int, capacity: int) -> int:
    """Free space rounded down to max(64 MiB, capacity/1024).

    Free space moves with every write anyone makes on the filesystem; reported exactly it would
    make the status "change" on every pass of every node. The rounding keeps it informative
    while an idle node writes nothing.
    """
    quantum = max(64 * 2**20, capacity // 1024)
    return free // quantum * quantum


def kserve_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields KServe's CRD keeps."""
    return {k: v for k, v in status.items() if k in KSERVE_STATUS_FIELDS}


def steady_view(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status without its fast-moving progress fields."""
    steady: dict[str, Any] = {}
    for field, value in status.items():
        if field in _VOLATILE_STATUS_FIELDS:
            continue
        if field == "modelDetails" and isinstance(value, Mapping):
            value = {
                key: {f: v for f, v in (detail or {}).items() if f not in _VOLATILE_DETAIL_FIELDS}
                for key, detail in value.items()
            }
        steady[field] = value
    return steady


def status_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any], *, additive_pruned: bool
) -> tuple[dict[str, Any], bool]:
    """(merge patch for `.status`, whether any of it is more than progress).

    `current` is the status the server last showed. When our additive fields are pruned, both
    sides are cut down to KServe's fields first.
    """
    current = dict(current or {})
    if additive_pruned:
        current, desired = kserve_view(current), kserve_view(desired)
    patch = merge_patch(current, desired)
    if not patch:
        return {}, False
    significant = bool(merge_patch(steady_view(current), steady_view(desired)))
    return patch, significant


def write_due(
    *, significant: bool, last_write: datetime | None, now: datetime, progress_interval: float
) -> tuple[bool, datetime | None]:
    """(write now?, else when). Significant changes go at once; progress waits its turn."""
    if significant or last_write is None:
        return True, None
    next_slot = last_write + timedelta(seconds=progress_interval)
    if now >= next_slot:
        return True, None
    return False, next_slot


def prune_recheck_due(*, pruned_seen_at: datetime | None, now: datetime, resync_seconds: float) -> bool:
    """Whether to send the whole status again although the CRD pruned the additive fields
    when last seen (`pruned_seen_at`; None: never seen pruning)."""
    if pruned_seen_at is None:
        return False
    return now >= pruned_seen_at + timedelta(seconds=PRUNE_RECHECK_PASSES * resync_seconds)


def additive_fields_pruned(sent: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """True when the server dropped an additive field we sent (KServe's CRDs are installed)."""
    stored = stored or {}
    return any(
        k not in KSERVE_STATUS_FIELDS and v not in (None, {}) and k not in stored
        for k, v in sent.items()
    )
