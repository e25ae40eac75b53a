"""The controller on a cluster that has KServe's own CRDs (no printer columns, pruned additive
status fields) instead of localmodel's: the whole cache lifecycle still works."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import PersistentVolume

from localmodel.api.keys import storage_key
from localmodel.controller.manager import Settings
from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources

from .conftest import JOB_NAMESPACE, POD_NAMESPACE, install_crds, kserve_reference, write_config
from .harness import (
    RunningController,
    absent,
    cache_status,
    create_cache,
    create_group,
    create_namespace,
    create_node,
    get_cache,
    lmn_models,
    node_labels,
    report_model,
    wait_for,
)

GI = 2**30


@pytest.fixture(scope="module")
def kserve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Client]]:
    with ControlPlane(tmp_path_factory.mktemp("kserve-crds")) as plane:
        reference = kserve_reference() / "crds"
        install_crds(plane, [reference / f"serving.kserve.io_{kind}.yaml" for kind in (
            "localmodelcaches", "localmodelnamespacecaches", "localmodelnodegroups", "localmodelnodes",
            "inferenceservices", "llminferenceservices")])
        client = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="localmodel-tests")
        create_namespace(client, POD_NAMESPACE)
        create_namespace(client, JOB_NAMESPACE)
        write_config(client)
        yield plane, client


@pytest.fixture(scope="module")
def kserve_controller(kserve_cluster: tuple[ControlPlane, Client]) -> Iterator[RunningController]:
    plane, _ = kserve_cluster
    settings = Settings(pod_namespace=POD_NAMESPACE, identity="on-kserve-crds", health_port=None,
                        lease_duration=4, renew_deadline=3, retry_period=0.5)
    running = RunningController(Path(plane.kubeconfig), settings).start()
    wait_for(lambda: running.is_leader, "leader")
    yield running
    running.stop()


def test_cache_lifecycle_on_kserve_crds(kserve_cluster: tuple[ControlPlane, Client],
                                        kserve_controller: RunningController) -> None:
    _, client = kserve_cluster
    create_group(client, "workers", value="workers", limit="50Gi")
    nodes = ["worker-a", "worker-b"]
    for node in nodes:
        create_node(client, node, {"pool": "workers"})
    create_node(client, "control-plane", {"pool": "control-plane"})
    uri = "hf://org/model"
    create_cache(client, "model", uri, ["workers"], size="10Gi")
    for node in nodes:
        wait_for(lambda node=node: lmn_models(client, node) == {"model"}, f"entry on {node}")
    assert lmn_models(client, "control-plane") == set()
    wait_for(lambda: client.get(PersistentVolume, "model-workers-download"), "download PV")
    for node in nodes:
        # additive fields are pruned by KServe's schema; the enum status is what counts
        report_model(client, node, {"model": "ModelDownloaded"}, disk={"usedBytes": 10 * GI})
    wait_for(lambda: cache_status(client, "model").get("copies") == {"available": 2, "total": 2, "failed": 0},
             "copies 2/2/0")
    label = f"model.localmodel.kserve.io/{storage_key(uri)}"
    for node in nodes:
        wait_for(lambda node=node: node_labels(client, node).get(label) == "true", f"label on {node}")
    assert "disk" not in (client.get(resources.LocalModelNode, "worker-a").get("status") or {})
    # the group's status is written from model sizes when present, else left empty: no crash
    ns = create_namespace(client, "serving")
    client.create(resources.InferenceService({
        "metadata": {"name": "svc", "namespace": ns, "labels": {"internal.serving.kserve.io/localmodel": "model"}},
        "spec": {"predictor": {"model": {"storageUri": uri}}}}))
    wait_for(lambda: cache_status(client, "model").get("inferenceServices") == [{"name": "svc", "namespace": ns}],
             "consumer tracked")
    client.delete(resources.InferenceService, "svc", namespace=ns)
    client.delete(resources.LocalModelCache, "model")
    for node in nodes:
        wait_for(lambda node=node: lmn_models(client, node) == set(), f"entry removed from {node}")
    wait_for(lambda: absent(lambda: get_cache(client, "model")), "cache deleted")
    for node in nodes:
        wait_for(lambda node=node: label not in node_labels(client, node), f"label removed from {node}")
