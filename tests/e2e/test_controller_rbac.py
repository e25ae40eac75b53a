"""The controller's shipped RBAC (deploy/controller/rbac.yaml) is enough for everything it does.

The controller runs as a process with a TokenRequest token of its own ServiceAccount, on a
control plane of this module's own with the shipped install, and is driven through every kind of
write it makes beyond the full loop: namespaced caches, Pod consumers (serving PV/PVC in the
Pod's namespace, via the shipped Pod webhook), group status, Events, the LocalModelNode of a
deleted Node, a group removed from a cache, and leader election. A call refused by RBAC shows as
`forbidden` in its log; the outcomes are checked as well, so a swallowed refusal fails too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node, PersistentVolume, PersistentVolumeClaim, Pod
from lightkube.types import PatchType

from localmodel.controller.names import LEADER_LOCK_NAME
from localmodel.dev.controller_process import ControllerProcess
from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources
from tests.controller.harness import (
    absent,
    cache_status,
    create_cache,
    create_group,
    create_namespace,
    create_node,
    deleted,
    events_about,
    lmn_models,
    node_labels,
    report_model,
    wait_for,
)
from tests.e2e.install import (
    CONTROLLER_ACCOUNT,
    JOB_NAMESPACE,
    NAMESPACE,
    install,
    register_webhooks,
    service_account_kubeconfig,
    start_controller,
)

GI = 2**30
DEADLINE = 120.0


@pytest.fixture(scope="module")
def rbac_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, ControllerProcess]]:
    workdir = tmp_path_factory.mktemp("controller-rbac")
    with ControlPlane(workdir / "cluster") as plane:
        install(plane, "localmodel")
        admin = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="localmodel-e2e")
        token = service_account_kubeconfig(plane, admin, CONTROLLER_ACCOUNT, Path(workdir / "token.kubeconfig"))
        controller = start_controller(plane, token, workdir / "controller")
        try:
            wait_for(controller.ready, "controller ready", timeout=DEADLINE)
            assert controller.webhook_port is not None
            register_webhooks(plane, controller.webhook_port)
            yield admin, controller
        finally:
            controller.stop()


def events_of(client: Client, name: str, namespace: str) -> set[str]:
    return {e["reason"] for e in events_about(client, name, namespace)}


def test_every_write_of_a_cache_lifecycle_is_allowed(rbac_cluster: tuple[Client, ControllerProcess]) -> None:
    client, controller = rbac_cluster
    lease = wait_for(lambda: client.get(Lease, LEADER_LOCK_NAME, namespace=NAMESPACE), "leader Lease")
    assert lease.spec.holderIdentity == "e2e-controller"

    create_group(client, "gpu", value="gpu", limit="100Gi")
    create_group(client, "cpu", value="cpu", limit="100Gi")
    for node in ("gpu-1", "gpu-2"):
        create_node(client, node, {"pool": "gpu"})
    create_node(client, "cpu-1", {"pool": "cpu"})

    # a cluster cache on two groups, and a namespaced one
    create_cache(client, "shared", "hf://org/shared", ["gpu", "cpu"], size="10Gi")
    team = create_namespace(client, "team")
    create_cache(client, "private", "s3://bucket/private", ["gpu"], namespace=team, size="5Gi")
    wait_for(lambda: lmn_models(client, "gpu-1") == {"shared", f"{team}/private"}, "entries on gpu-1")
    wait_for(lambda: lmn_models(client, "cpu-1") == {"shared"}, "entry on cpu-1")
    for name in ("shared-gpu-download", "shared-cpu-download", f"private-gpu-{team}-download"):
        wait_for(lambda name=name: client.get(PersistentVolume, name), f"PV {name}")
    wait_for(lambda: client.get(PersistentVolumeClaim, f"private-gpu-{team}-download", namespace=JOB_NAMESPACE),
             "namespaced cache's download claim")

    # agents' reports: labels on nodes, cache status, group status, Events
    for node in ("gpu-1", "gpu-2"):
        report_model(client, node, {"shared": "ModelDownloaded", f"{team}/private": "ModelDownloaded"},
                     disk={"capacityBytes": 500 * GI, "usedBytes": 15 * GI, "freeBytes": 400 * GI})
    report_model(client, "cpu-1", {"shared": "ModelDownloadError"},
                 modelDetails={"shared": {"reason": "AccessDenied", "message": "401"}})
    wait_for(lambda: cache_status(client, "shared").get("copies") == {"available": 2, "total": 3, "failed": 1},
             "copies of the shared cache")
    wait_for(lambda: cache_status(client, "private", team).get("copies") == {"available": 2, "total": 2, "failed": 0},
             "copies of the namespaced cache")
    wait_for(lambda: any(k.startswith("model.localmodel.kserve.io/") for k in node_labels(client, "gpu-1")),
             "model label on gpu-1")
    wait_for(lambda: (client.get(resources.LocalModelNodeGroup, "gpu").get("status") or {}).get("used") == "15Gi",
             "group status")
    wait_for(lambda: "NodeDownloadFailed" in events_of(client, "shared", "default"), "Event of a cluster cache")
    wait_for(lambda: "CopiesComplete" in events_of(client, "private", team), "Event of a namespaced cache")

    # a Pod consumer in another namespace: the Pod webhook mounts the model, the controller makes
    # the serving PV/PVC there
    apps = create_namespace(client, "apps")
    pod = Pod.from_dict({"metadata": {"name": "worker", "namespace": apps,
                                      "labels": {"localmodel.kserve.io/cache": "shared"}},
                         "spec": {"containers": [{"name": "main", "image": "vllm"}]}})
    # the namespace's default ServiceAccount is made asynchronously; Pod admission needs it
    created = wait_for(lambda: client.create(pod), "pod admitted")
    assert any(v.name == "localmodel-cache" for v in created.spec.volumes or [])
    wait_for(lambda: client.get(PersistentVolumeClaim, "shared-gpu", namespace=apps), "serving claim for the pod")
    wait_for(lambda: client.get(PersistentVolume, f"shared-gpu-{apps}"), "serving volume for the pod")

    # a group dropped from the cache: its entries and volumes go
    client.patch(resources.LocalModelCache, "shared", {"spec": {"nodeGroups": ["gpu"]}}, patch_type=PatchType.MERGE)
    wait_for(lambda: lmn_models(client, "cpu-1") == set(), "entry removed from cpu-1")
    wait_for(lambda: deleted(lambda: client.get(PersistentVolume, "shared-cpu-download")), "cpu download PV deleted")

    # a deleted Node: its LocalModelNode goes
    client.delete(Node, "gpu-2")
    wait_for(lambda: absent(lambda: client.get(resources.LocalModelNode, "gpu-2")), "orphan LocalModelNode deleted")

    # deletion of both caches: finalizers removed, volumes deleted
    client.delete(Pod, "worker", namespace=apps)
    client.delete(resources.LocalModelNamespaceCache, "private", namespace=team)
    client.delete(resources.LocalModelCache, "shared")
    wait_for(lambda: absent(lambda: client.get(resources.LocalModelCache, "shared")), "cluster cache deleted",
             timeout=DEADLINE)
    wait_for(lambda: absent(lambda: client.get(resources.LocalModelNamespaceCache, "private", namespace=team)),
             "namespaced cache deleted", timeout=DEADLINE)
    wait_for(lambda: not any(k.startswith("model.localmodel.kserve.io/") for k in node_labels(client, "gpu-1")),
             "model label removed")
    assert deleted(lambda: client.get(PersistentVolume, "shared-gpu-download"))

    # a cache naming a group that does not exist gets a Warning Event
    create_cache(client, "orphan", "s3://bucket/orphan", ["no-such-group"])
    wait_for(lambda: "NodeGroupNotFound" in events_of(client, "orphan", "default"), "NodeGroupNotFound Event")

    log = controller.log_text()
    assert "forbidden" not in log.lower(), log[-6000:]
