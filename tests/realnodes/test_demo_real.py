"""`localmodel dev demo --real-nodes` (issue 12, item 7), on the session's nodes: the product
image installed with kustomize, the sample model cached on both nodes, and a consumer Pod on the
controller's claim reading every file with the origin's sha256. The command starts its own
nodes; the function under it takes an existing cluster, which is what runs here (one cluster
of real nodes runs on a machine at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmodel.dev.demo import CACHE, DemoError
from localmodel.dev.nodes import RealNodeCluster
from localmodel.dev.oci import WrittenImage
from localmodel.dev.realdemo import run_real_node_demo, wait_real_demo_ready

pytestmark = pytest.mark.realnodes


def test_the_real_node_demo_caches_the_model_and_a_pod_reads_it(
    real_nodes: RealNodeCluster, product_image: WrittenImage, tmp_path: Path
) -> None:
    said: list[str] = []
    with run_real_node_demo(tmp_path, model_mb=4, say=said.append, cluster=real_nodes,
                            image_archive=product_image.archive, image=product_image.reference) as demo:
        report = wait_real_demo_ready(demo, timeout=300, on_report=lambda r: None)
        assert (report.name, report.available, report.total) == (CACHE, 2, 2)
        assert demo.consumer["node"] in ("node-1", "node-2")
        assert demo.consumer["files"] == len(demo.digests) == 6
        installed = demo.installed
        assert sorted(installed.agent_pods(real_nodes)) == ["node-1", "node-2"]
    assert any("installing the product" in line for line in said)
    # Everything it made on the borrowed cluster is gone again.
    left = real_nodes.kubectl("get", "crd", "localmodelcaches.serving.kserve.io", check=False)
    assert left.returncode != 0 and "NotFound" in left.stderr


def test_the_real_node_demo_says_why_it_is_not_ready(
    real_nodes: RealNodeCluster, product_image: WrittenImage, tmp_path: Path
) -> None:
    """A failure is reported with its reason: here the origin stops before the download."""
    with run_real_node_demo(tmp_path, model_mb=3, say=lambda _: None, cluster=real_nodes,
                            image_archive=product_image.archive, image=product_image.reference) as demo:
        demo.origin.stop(5.0)
        with pytest.raises(DemoError, match="the origin exited"):
            wait_real_demo_ready(demo, timeout=60, on_report=lambda r: None)
