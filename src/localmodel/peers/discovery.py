"""Which other nodes hold a storage key complete, and where their agents serve it.

Read from the LocalModelNodes themselves, which every agent already keeps current:
- `status.peerEndpoint`: the URL the node's agent serves on (written by that agent; the
  admission policy lets an agent write only its own node's object);
- `spec.localModels[*].sourceModelUri` → storage key (sha256(uri)[:16], as the folder name);
- `status.modelStatus[statusKey] == ModelDownloaded`: the key is complete there.

The spec gives the key even when KServe's CRDs prune `modelDetails`. `peerEndpoint` itself is
pruned by KServe's CRDs, so a second source gives a node's address whatever CRD is installed:
the EndpointSlices of the headless Service over the agent Pods
(`kserve-localmodelnode-agent-peers`, deploy/agent/peer-service.yaml), whose endpoints carry
`nodeName` and the Pod IP, with the Service's `peer` port. `peerEndpoint` wins where both exist.
Trust does not depend on either: a peer proves its identity with a token, and every piece it
sends is checked against the origin's digests (docs/p2p.md).

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
from lightkube.resources.discovery_v1 import EndpointSlice

from localmodel.api.keys import status_key, storage_key
from localmodel.api.types import ModelStatus
from localmodel.kube import resources
from localmodel.peers.source import Peer

logger = logging.getLogger(__name__)

#: The headless Service selecting the agent Pods; its EndpointSlices give node → Pod IP.
PEER_SERVICE = "kserve-localmodelnode-agent-peers"
PEER_PORT_NAME = "peer"
_SERVICE_NAME_LABEL = "kubernetes.io/service-name"


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


def endpoints_by_node(slices: Iterable[Mapping[str, Any]], port_name: str = PEER_PORT_NAME) -> dict[str, str]:
    """nodeName → `http://<Pod IP>:<port>` from a Service's EndpointSlices (pure). The
    EndpointSlice controller writes IPv4/IPv6 slices for the agent Pods; FQDN slices, written by
    hand for agents that are not Pods, work too.

    Endpoints being deleted are skipped; where a node has two (an agent Pod being replaced),
    the first in slice-name order is kept, so every agent picks the same one.
    """
    found: dict[str, str] = {}
    for item in sorted(slices, key=lambda s: str((s.get("metadata") or {}).get("name", ""))):
        family = item.get("addressType")
        if family not in ("IPv4", "IPv6", "FQDN"):
            continue
        port = next((p.get("port") for p in item.get("ports") or []
                     if isinstance(p, Mapping) and p.get("name") == port_name), None)
        if not isinstance(port, int):
            continue
        for endpoint in item.get("endpoints") or []:
            if not isinstance(endpoint, Mapping) or (endpoint.get("conditions") or {}).get("terminating"):
                continue
            node, addresses = endpoint.get("nodeName"), endpoint.get("addresses") or []
            if not isinstance(node, str) or not addresses or not isinstance(addresses[0], str):
                continue
            host = f"[{addresses[0]}]" if family == "IPv6" else addresses[0]
            url = valid_endpoint(f"http://{host}:{port}")
            if url is not None:
                found.setdefault(node, url)
    return found


def peers_by_key(objects: Iterable[Mapping[str, Any]], *, exclude: str,
                 phase: ModelStatus = ModelStatus.DOWNLOADED,
                 endpoints: Mapping[str, str] | None = None) -> dict[str, list[Peer]]:
    """storage key → peers holding it complete (or in another `phase`), from LocalModelNode
    objects and, for nodes whose `peerEndpoint` is missing (pruned), `endpoints` by node (pure)."""
    found: dict[str, list[Peer]] = {}
    for obj in objects:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or name == exclude:
            continue
        endpoint = valid_endpoint((obj.get("status") or {}).get("peerEndpoint"))
        if endpoint is None:
            endpoint = (endpoints or {}).get(name)
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
                 clock: Callable[[], float] = time.monotonic,
                 service: tuple[str, str] | None = None) -> None:
        self._client = client
        self._node_name = node_name
        self._ttl = ttl
        self._clock = clock
        #: (namespace, name) of the headless Service over the agents, or None.
        self._service = service
        self._lock = threading.Lock()
        self._objects: list[dict[str, Any]] = []
        self._endpoints: dict[str, str] = {}
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
                self._endpoints = self._list_endpoints()
                self.lists += 1
                self._taken_at = self._clock()
            return self._objects

    def _list_endpoints(self) -> dict[str, str]:
        if self._service is None:
            return {}
        namespace, name = self._service
        try:
            slices = self._client.list(EndpointSlice, namespace=namespace, labels={_SERVICE_NAME_LABEL: name})
            return endpoints_by_node(item.to_dict() for item in slices)
        except Exception as exc:  # noqa: BLE001 - then only peerEndpoint finds peers
            logger.warning("could not list the peer Service's EndpointSlices",
                           extra={"service": f"{namespace}/{name}", "error": f"{exc.__class__.__name__}: {exc}"})
            return {}

    def finds_peers_without_status(self) -> bool:
        """Whether nodes can find each other when status.peerEndpoint is pruned (KServe's CRDs):
        the peer Service lists this node's own agent, so the others find it as it finds them
        (none listed yet is no reason to skip the origin slots: they may come a moment later)."""
        self._snapshot(None)  # lists again only when the last list is `ttl` old
        with self._lock:
            return self._node_name in self._endpoints

    def complete_peers(self, key: str, *, max_age: float | None = None) -> list[Peer]:
        """Peers holding `key` complete, from a list at most `max_age` (default `ttl`) old."""
        objects = self._snapshot(max_age)
        return peers_by_key(objects, exclude=self._node_name, endpoints=self._endpoints).get(key, [])

    def downloading_peers(self, key: str, *, max_age: float | None = None) -> list[Peer]:
        """Peers downloading `key` now (they serve the pieces they have written)."""
        objects = self._snapshot(max_age)
        return peers_by_key(objects, exclude=self._node_name, phase=ModelStatus.DOWNLOADING,
                            endpoints=self._endpoints).get(key, [])

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
        self._snapshot(None)  # the Service's endpoints, at most `ttl` old
        endpoints = self._endpoints
        complete = peers_by_key(objects, exclude=self._node_name, endpoints=endpoints).get(key, [])
        downloading = peers_by_key(objects, exclude=self._node_name, phase=ModelStatus.DOWNLOADING,
                                   endpoints=endpoints).get(key, [])
        return complete, downloading
