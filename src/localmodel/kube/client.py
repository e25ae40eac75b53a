"""Kubernetes clients: from a kubeconfig file when given, else in-cluster, else ~/.kube/config."""

from __future__ import annotations

from lightkube import ApiError, AsyncClient, Client, KubeConfig


def kube_config(kubeconfig: str | None = None) -> KubeConfig:
    if kubeconfig:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


def async_client(kubeconfig: str | None = None, *, field_manager: str = "localmodel") -> AsyncClient:
    return AsyncClient(config=kube_config(kubeconfig), field_manager=field_manager)


def sync_client(kubeconfig: str | None = None, *, field_manager: str = "localmodel") -> Client:
    return Client(config=kube_config(kubeconfig), field_manager=field_manager)


def status_code(error: BaseException) -> int | None:
    """The HTTP status behind an API failure, whichever layer raised it.

    lightkube raises ApiError for most calls (and for a watch's ERROR event), but an async list
    of a resource the server does not serve, or a watch refused with 410, surfaces as the HTTP
    library's status error; both mean the same thing to a caller.
    """
    if isinstance(error, ApiError):
        return int(error.status.code) if error.status.code is not None else None
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None
