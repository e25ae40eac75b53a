"""InferenceService and LLMInferenceService defaulting for local models (KServe's I1–I3).

When the consumer's model URI matches a cache (namespaced caches in its namespace first, then
cluster caches; first match wins), it gets KServe's label and annotations that tie it to the
cache and name the PVC to mount; on a miss they are removed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from localmodel.api.keys import match_storage_uri
from localmodel.controller import names
from localmodel.kube.patches import json_patch
from localmodel.controller.views import Cache

# Framework predictors that KServe folds into `model` (they all carry storageUri).
_PREDICTOR_FRAMEWORKS = (
    "sklearn", "tensorflow", "xgboost", "pytorch", "triton", "onnx", "huggingface", "pmml",
    "lightgbm", "paddle",
)


def isvc_storage_uri(isvc: Mapping[str, Any]) -> str | None:
    """The predictor's storageUri: `model`, a framework spec, or a custom container's env."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    for key in ("model", *_PREDICTOR_FRAMEWORKS):
        uri = (predictor.get(key) or {}).get("storageUri")
        if uri:
            return str(uri)
    for container in predictor.get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "STORAGE_URI" and env.get("value"):
                return str(env["value"])
    return None


def llmisvc_storage_uri(llmisvc: Mapping[str, Any]) -> str | None:
    uri = ((llmisvc.get("spec") or {}).get("model") or {}).get("uri")
    return str(uri) if uri else None


def choose_cache(uri: str, node_group: str | None, namespaced: Sequence[Cache],
                 cluster: Sequence[Cache]) -> tuple[Cache, str] | None:
    """(cache, PVC name) per I2; a nodegroup annotation that is not the cache's skips that cache."""
    for cache in (*namespaced, *cluster):
        if not cache.node_groups or not match_storage_uri(cache.source_model_uri, uri):
            continue
        if node_group is not None:
            if node_group not in cache.node_groups:
                continue
            group = node_group
        else:
            group = cache.node_groups[0]
        return cache, names.serving_pvc_name(cache.ref, group)
    return None


def defaulted(obj: Mapping[str, Any], uri: str | None, enabled: bool,
              namespaced: Sequence[Cache], cluster: Sequence[Cache]) -> dict[str, Any]:
    """The consumer with local-model metadata set (I3) or removed."""
    out = copy.deepcopy(dict(obj))
    meta = out.setdefault("metadata", {})
    labels = dict(meta.get("labels") or {})
    annotations = dict(meta.get("annotations") or {})
    hit = None
    if enabled and names.DISABLE_LOCAL_MODEL_ANNOTATION not in annotations and uri:
        hit = choose_cache(uri, annotations.get(names.NODE_GROUP_ANNOTATION), namespaced, cluster)
    for key in (names.LOCAL_MODEL_LABEL, names.LOCAL_MODEL_NAMESPACE_LABEL):
        labels.pop(key, None)
    for key in (names.LOCAL_MODEL_SOURCE_URI_ANNOTATION, names.LOCAL_MODEL_PVC_NAME_ANNOTATION):
        annotations.pop(key, None)
    if hit is not None:
        cache, pvc_name = hit
        labels[names.LOCAL_MODEL_LABEL] = cache.ref.name
        if cache.ref.namespaced:
            labels[names.LOCAL_MODEL_NAMESPACE_LABEL] = cache.ref.namespace
        annotations[names.LOCAL_MODEL_SOURCE_URI_ANNOTATION] = cache.source_model_uri
        annotations[names.LOCAL_MODEL_PVC_NAME_ANNOTATION] = pvc_name
    if labels or "labels" in meta:
        meta["labels"] = labels
    if annotations or "annotations" in meta:
        meta["annotations"] = annotations
    return out


def defaulting_patch(obj: Mapping[str, Any], uri: str | None, enabled: bool,
                     namespaced: Sequence[Cache], cluster: Sequence[Cache]) -> list[dict[str, Any]]:
    return json_patch(dict(obj), defaulted(obj, uri, enabled, namespaced, cluster))
