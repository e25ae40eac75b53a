"""Kubernetes clients: from a kubeconfig file when given, else in-cluster, else ~/.kube/config."""

from __future__ import annotations

from lightkube import AsyncClient, Client, KubeConfig


def kube_config(kubeconfig: str | None = None) -> KubeConfig:
    if kubeconfig:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


def async_client(kubeconfig: str | None = None, *, field_manager: str = "localmodel") -> AsyncClient:
    return AsyncClient(config=kube_config(kubeconfig), field_manager=field_manager)


def sync_client(kubeconfig: str | None = None, *, field_manager: str = "localmodel") -> Client:
    return Client(config=kube_config(kubeconfig), field_manager=field_manager)
