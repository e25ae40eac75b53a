"""The apiserver can be stopped and started again on the same port, with etcd's data intact:
the fault tests rely on this to cut the API away from the controller and the agents."""

from __future__ import annotations

import httpx2
import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from localmodel.dev.controlplane import ControlPlane


def test_stop_and_restart_apiserver_keeps_data_port_and_credentials(
    kube: ControlPlane, kube_client: Client, namespace: str
) -> None:
    kube_client.create(ConfigMap(metadata=ObjectMeta(name="survivor", namespace=namespace), data={"k": "v"}))
    port_before = kube.apiserver_port
    kubeconfig_before = kube.kubeconfig.read_bytes()

    kube.stop_apiserver()
    try:
        assert not kube.apiserver_running()
        offline = Client(KubeConfig.from_file(kube.kubeconfig))
        with pytest.raises(httpx2.ConnectError):
            offline.get(ConfigMap, "survivor", namespace=namespace)
    finally:
        kube.start_apiserver()

    assert kube.apiserver_running()
    assert kube.apiserver_port == port_before
    assert kube.kubeconfig.read_bytes() == kubeconfig_before
    # A client made before the outage works again without being rebuilt.
    assert kube_client.get(ConfigMap, "survivor", namespace=namespace).data == {"k": "v"}


def test_stop_apiserver_twice_is_harmless(kube: ControlPlane) -> None:
    kube.stop_apiserver()
    kube.stop_apiserver()
    kube.start_apiserver()
    assert kube.kubectl("get", "ns", "default", "-o", "name").stdout.strip() == "namespace/default"
