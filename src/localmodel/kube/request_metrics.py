"""Client-side counts of Kubernetes API requests, by verb, resource, subresource and status code.

The apiserver's `apiserver_request_total` adds up every client together; these counters are one
process's own share, so a controller's `/metrics` shows what it costs the apiserver. Requests
are classified from the method and URL alone, with the apiserver's verbs (GET vs LIST, WATCH,
DELETECOLLECTION). A watch is counted when its response starts (the apiserver counts it when it
ends), and a request that got no response (connection refused, timeout) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from lightkube import AsyncClient, Client
from prometheus_client import CollectorRegistry, Counter

NON_RESOURCE = "<non-resource>"


class RequestKind(NamedTuple):
    verb: str  # GET LIST WATCH POST PUT PATCH DELETE DELETECOLLECTION
    resource: str  # plural, e.g. "localmodelnodes"; NON_RESOURCE for /healthz, /version, ...
    subresource: str  # e.g. "status"; "" for the object itself


def classify(method: str, path: str, query: Mapping[str, str]) -> RequestKind:
    """How kube-apiserver labels a request: `GET /api/v1/nodes` is LIST, with `watch=true` WATCH."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        rest = parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        rest = parts[3:]
    else:
        return RequestKind(method.upper(), NON_RESOURCE, "")
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]  # a namespaced resource; `/namespaces/x` alone is the Namespace itself
    if not rest:
        return RequestKind(method.upper(), NON_RESOURCE, "")
    resource = rest[0]
    named = len(rest) >= 2
    subresource = rest[2] if len(rest) >= 3 else ""
    verb = method.upper()
    if verb == "GET" and not named:
        verb = "WATCH" if query.get("watch") in ("true", "1") else "LIST"
    elif verb == "DELETE" and not named:
        verb = "DELETECOLLECTION"
    return RequestKind(verb, resource, subresource)


class ApiRequestCounter:
    """`localmodel_kube_api_requests_total{verb, resource, subresource, code}` in `registry`."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "localmodel") -> None:
        self.counter = Counter(
            f"{prefix}_kube_api_requests_total",
            "Kubernetes API requests this process sent, by verb, resource, subresource and HTTP status.",
            ["verb", "resource", "subresource", "code"], registry=registry,
        )

    def record(self, method: str, path: str, query: Mapping[str, str], code: int) -> None:
        kind = classify(method, path, query)
        self.counter.labels(kind.verb, kind.resource, kind.subresource, str(code)).inc()

    def attach(self, client: AsyncClient | Client) -> None:
        """Count every response `client` receives from now on."""
        # lightkube has no hook of its own, and a custom transport would bypass the TLS and auth
        # setup it derives from the kubeconfig; its httpx client's event hooks see every response.
        http = client._client._client  # lightkube client → generic client → httpx client

        def observe(response: Any) -> None:
            request = response.request
            self.record(request.method, request.url.path, dict(request.url.params), response.status_code)

        if isinstance(client, AsyncClient):
            async def observe_async(response: Any) -> None:
                observe(response)

            http.event_hooks["response"].append(observe_async)
        else:
            http.event_hooks["response"].append(observe)
