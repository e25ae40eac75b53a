"""Which other nodes hold a storage key complete, and where their agents serve it.

Read from the LocalModelNodes themselves, which every agent already keeps current:
- `status.peerEndpoint`: the URL the node's agent serves on (written by that agent; the
  admission policy lets an agent write only its own node's object);
- `spec.localModels[*].sourceModelUri` → storage key (sha256(uri)[:16], as the folder name);
- `status.modelStatus[statusKey] == ModelDownloaded`: the key is complete there.

The spec gives the key even when KServe's CRDs prune `modelDetails`; `peerEndpoint` itself
is pruned by KServe's CRDs, so with those installed no peer is ever found (every node uses
the origin, as before).

Listing every LocalModelNode is done on demand, only while a download looks for peers, and
the answer is shared for `ttl` seconds by every download of the agent. A watch would push
every status write of every node to every agent (N² traffic); a list costs one response
per asking agent per `ttl`, and only while that agent waits for or starts a download.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from lightkube import Client

from localmodel.api.keys import status_key, storage_key
from localmodel.api.types import ModelStatus
from localmodel.kube import resources
from localmodel.peers.source import Peer

logger = logging.getLogger(__name__)


def valid_endpoint(value: Any) -> str | None:
    """The endpoint if it is a plain http(s)://host:port URL (no path, user or query)."""
    if not isinstance(value, str) or len(value) > 256:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return None
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        return None
    return value.rstrip("/")


def keys_in_phase(obj: Mapping[str, Any], phase: ModelStatus) -> set[str]:
    """Storage keys a LocalModelNode reports in `phase`."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    phases = status.get("modelStatus") or {}
    details = status.get("modelDetails") or {}
    keys: set[str] = set()
    for entry in spec.get("localModels") or []:
        if not isinstance(entry, Mapping):
            continue
        uri, name = entry.get("sourceModelUri"), entry.get("modelName")
        if not isinstance(uri, str) or not isinstance(name, str):
            continue
        skey = status_key(name, entry.get("namespace") or "")
        if phases.get(skey) != phase.value:
            continue
        detail = details.get(skey)
        recorded = detail.get("storageKey") if isinstance(detail, Mapping) else None
        key = storage_key(uri)
        if recorded in (None, key):
            keys.add(key)
    return keys


def peers_by_key(objects: Iterable[Mapping[str, Any]], *, exclude: str,
                 phase: ModelStatus = ModelStatus.DOWNLOADED) -> dict[str, list[Peer]]:
    """storage key → peers holding it complete (or in another `phase`), from LocalModelNode
    objects (pure)."""
    found: dict[str, list[Peer]] = {}
    for obj in objects:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or name == exclude:
            continue
        endpoint = valid_endpoint((obj.get("status") or {}).get("peerEndpoint"))
        if endpoint is None:
            continue
        for key in keys_in_phase(obj, phase):
            found.setdefault(key, []).append(Peer(name=name, endpoint=endpoint))
    for peers in found.values():
        peers.sort(key=lambda peer: peer.name)
    return found


class PeerDirectory:
    """Peers per storage key, from a cluster-wide list of LocalModelNodes, shared for `ttl`
    seconds; and single nodes by name (the holders of origin slots), read on every ask."""

    def __init__(self, client: Client, *, node_name: str, ttl: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._node_name = node_name
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: list[dict[str, Any]] = []
        self._taken_at: float | None = None
        #: Lists sent (tests and metrics).
        self.lists = 0

    def _snapshot(self, max_age: float | None) -> list[dict[str, Any]]:
        with self._lock:
            age = None if self._taken_at is None else self._clock() - self._taken_at
            if age is None or age >= (self._ttl if max_age is None else max_age):
                try:
                    self._objects = [obj.to_dict() for obj in self._client.list(resources.LocalModelNode)]
                except Exception as exc:  # noqa: BLE001 - no peers is always a safe answer
                    logger.warning("could not list LocalModelNodes to find peers",
                                   extra={"error": f"{exc.__class__.__name__}: {exc}"})
                    return []
                self.lists += 1
                self._taken_at = self._clock()
            return self._objects

    def complete_peers(self, key: str, *, max_age: float | None = None) -> list[Peer]:
        """Peers holding `key` complete, from a list at most `max_age` (default `ttl`) old."""
        return peers_by_key(self._snapshot(max_age), exclude=self._node_name).get(key, [])

    def downloading_peers(self, key: str, *, max_age: float | None = None) -> list[Peer]:
        """Peers downloading `key` now (they serve the pieces they have written)."""
        return peers_by_key(self._snapshot(max_age), exclude=self._node_name,
                            phase=ModelStatus.DOWNLOADING).get(key, [])

    def nodes(self, names: Iterable[str], key: str) -> tuple[list[Peer], list[Peer]]:
        """(complete, downloading) among the named nodes, read now (one GET each)."""
        objects: list[dict[str, Any]] = []
        for name in names:
            if name == self._node_name:
                continue
            try:
                objects.append(self._client.get(resources.LocalModelNode, name).to_dict())
            except Exception:  # noqa: BLE001 - a node that cannot be read is no peer
                continue
        complete = peers_by_key(objects, exclude=self._node_name).get(key, [])
        downloading = peers_by_key(objects, exclude=self._node_name, phase=ModelStatus.DOWNLOADING).get(key, [])
        return complete, downloading
