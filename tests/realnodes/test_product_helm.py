"""The Helm chart brings up the same product on the real nodes (issue 12, item 3): `helm template`
of charts/localmodel with the local image, applied server-side (the chart makes its own webhook
certificate); the controller and both agents become Ready, the webhooks answer through their
Service, and a cache lands on both nodes and is read by a Pod on the controller's claim.

Runs after test_product.py, which removes its kustomize installation at the end: both install
the same cluster-scoped objects (CRDs, webhook configurations, admission policy)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localmodel.api.keys import storage_key
from localmodel.dev.nodes import RealNodeCluster
from localmodel.dev.product import InstalledProduct, install_chart, read_digests, reader_pod, uninstall
from tests.node.models import make_model, tree_digests
from tests.packaging.conftest import build_helm
from tests.realnodes.test_product import GROUP_LABEL, MiB, apply, cache, eventually, get, group
from tests.real_nodes import record_install
from tests.servers.s3 import RcloneS3Server

pytestmark = pytest.mark.realnodes


@pytest.fixture(scope="module")
def chart_install(real_nodes: RealNodeCluster, localmodel_image: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledProduct]:
    helm = build_helm()
    installed = install_chart(real_nodes, localmodel_image, helm, workdir=tmp_path_factory.mktemp("chart"))
    record_install(installed.method, installed.timings)
    try:
        yield installed
    finally:
        uninstall(real_nodes, installed)
        for node in real_nodes.nodes:
            real_nodes.kubectl("label", "node", node.name, f"{GROUP_LABEL}-", "kserve/localmodel-", check=False)


def test_the_chart_installs_the_controller_and_the_agents_and_a_cache_lands(
    real_nodes: RealNodeCluster, chart_install: InstalledProduct, localmodel_image: str,
    pod_reachable_s3: RcloneS3Server,
) -> None:
    cluster, installed = real_nodes, chart_install
    assert installed.method == "helm"
    [controller] = installed.controller_pods(cluster)
    assert controller["spec"]["containers"][0]["image"] == localmodel_image
    assert all(s["ready"] for s in controller["status"]["containerStatuses"])
    agents = installed.agent_pods(cluster)
    assert sorted(agents) == ["node-1", "node-2"]
    for pod in agents.values():
        assert all(s["ready"] for s in pod["status"]["containerStatuses"])
        assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    s3 = pod_reachable_s3
    digests = make_model(s3.bucket("chart") / "mistral", {"config.json": 900, "model.safetensors": 3 * MiB + 5},
                         seed=2)
    uri = "s3://chart/mistral"
    for node in cluster.nodes:
        cluster.kubectl("label", "node", node.name, f"{GROUP_LABEL}=yes", "--overwrite")
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "s3-credentials", "namespace": installed.job_namespace, "annotations": {
             "serving.kserve.io/s3-endpoint": s3.endpoint.removeprefix("http://"),
             "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": s3.region}},
         "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "s3-reader", "namespace": installed.job_namespace},
         "secrets": [{"name": "s3-credentials"}]},
        group("workers", GROUP_LABEL),
    )
    apply(cluster, cache("mistral", uri, "workers"))

    want = {"available": 2, "total": 2, "failed": 0}
    eventually(lambda: (get(cluster, "localmodelcache", "mistral").get("status") or {}).get("copies") == want,
               "copies 2/2 with the chart's installation")
    key = storage_key(uri)
    for node in cluster.nodes:
        assert tree_digests(node.host_path("/models") / "models" / key) == digests, node.name

    apply(cluster, reader_pod(localmodel_image, "chart-reader", installed.job_namespace,
                              claim="mistral-workers", sub_path=f"models/{key}"))
    assert read_digests(cluster, installed.job_namespace, "chart-reader") == digests
