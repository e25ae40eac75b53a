"""The harness starts a real control plane and hands out a working admin kubeconfig."""

from __future__ import annotations

import json

from lightkube import Client
from lightkube.resources.authentication_v1 import SelfSubjectReview

from localmodel.dev.build import default_source_dir, kubernetes_version
from localmodel.dev.controlplane import ADMIN_USER, ControlPlane


def test_kubectl_lists_the_builtin_namespaces(kube: ControlPlane) -> None:
    result = kube.kubectl("get", "ns", "-o", "name")
    names = set(result.stdout.split())
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public"} <= names


def test_apiserver_listens_on_loopback_with_tls(kube: ControlPlane) -> None:
    assert kube.server == f"https://127.0.0.1:{kube.apiserver_port}"
    assert kube.server_ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_admin_kubeconfig_is_a_system_masters_client_cert(kube_client: Client) -> None:
    review = kube_client.create(SelfSubjectReview())
    assert review.status.userInfo.username == ADMIN_USER
    assert "system:masters" in review.status.userInfo.groups


def test_server_and_kubectl_report_the_pinned_kubernetes_version(kube: ControlPlane) -> None:
    versions = json.loads(kube.kubectl("version", "-o", "json").stdout)
    expected = kubernetes_version(default_source_dir())
    assert versions["serverVersion"]["gitVersion"] == expected
    assert versions["clientVersion"]["gitVersion"] == expected


def test_component_logs_are_written_to_the_workdir(kube: ControlPlane) -> None:
    for component in ("etcd", "kube-apiserver"):
        assert (kube.logs_dir / f"{component}.log").stat().st_size > 0
