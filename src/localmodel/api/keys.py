"""Identity rules shared with KServe: storage keys, status keys and storage-URI matching.

These must stay byte-for-byte compatible with KServe, because a node's on-disk layout
(`<root>/models/<storage_key(uri)>`) and LocalModelNode status keys are shared with it.
"""

from __future__ import annotations

import hashlib
import re

STORAGE_KEY_LENGTH = 16
_STORAGE_KEY_SHAPE = re.compile(r"^[0-9a-f]{16}$")


def storage_key(uri: str) -> str:
    """The folder name of a model on a node: the first 16 hex digits of sha256(uri).

    The URI is hashed exactly as written, so `s3://a` and `s3://a/` are different models,
    as in KServe.
    """
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:STORAGE_KEY_LENGTH]


def is_storage_key(name: str) -> bool:
    """True for names shaped like a storage key; only such folders are ever deleted."""
    return bool(_STORAGE_KEY_SHAPE.match(name))


def status_key(model_name: str, namespace: str = "") -> str:
    """Key of `LocalModelNode.status.modelStatus`: `name` for cluster caches, `ns/name` otherwise."""
    return f"{namespace}/{model_name}" if namespace else model_name


def match_storage_uri(cached: str, requested: str) -> bool:
    """True when `requested` is the cached model or a path inside it.

    One trailing slash is ignored on each side. A prefix only counts when the next character is
    `/`, so `gs://b/model` matches `gs://b/model/sub/x.pt` but never `gs://b/model-evil`.
    """
    cached = cached.removesuffix("/")
    requested = requested.removesuffix("/")
    if not cached:
        return False
    if requested == cached:
        return True
    return requested.startswith(cached) and requested[len(cached)] == "/"
