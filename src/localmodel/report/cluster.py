"""Read the objects the status report needs, turning API failures into one clear message."""

from __future__ import annotations

from typing import Any

from lightkube import ApiError, Client
from lightkube.core.exceptions import ConfigError as KubeConfigError

from localmodel.kube import resources
from localmodel.kube.client import sync_client
from localmodel.report.status import CacheReport, build_report


class ClusterUnavailable(Exception):
    """The cluster cannot answer: unreachable, unauthorized, or localmodel's CRDs are missing."""


def _list(client: Client, resource: Any, what: str, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        return [dict(obj) for obj in client.list(resource, **kwargs)]
    except ApiError as exc:
        if exc.status.code == 404:
            raise ClusterUnavailable(
                f"the {what} CRD is not installed in this cluster; install it with "
                "`localmodel crds | kubectl apply -f -` (or `kubectl apply -k deploy/`)"
            ) from exc
        raise ClusterUnavailable(f"listing {what}: {exc.status.code} {exc.status.message}") from exc


def read_report(kubeconfig: str | None) -> list[CacheReport]:
    try:
        client = sync_client(kubeconfig)
    except (KubeConfigError, OSError) as exc:
        raise ClusterUnavailable(f"no usable kubeconfig: {exc}") from exc
    try:
        caches = _list(client, resources.LocalModelCache, "LocalModelCache")
        caches += _list(client, resources.LocalModelNamespaceCache, "LocalModelNamespaceCache",
                        namespace="*")
        nodes = _list(client, resources.LocalModelNode, "LocalModelNode")
    except ClusterUnavailable:
        raise
    except Exception as exc:  # transport errors come from the HTTP library lightkube wraps
        server = client.config.cluster.server if client.config else "?"
        raise ClusterUnavailable(
            f"cannot reach the Kubernetes API at {server}: {type(exc).__name__}: {exc}"
        ) from exc
    return build_report(caches, nodes)
