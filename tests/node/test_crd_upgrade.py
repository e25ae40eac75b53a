"""Agents that run while the CRDs change under them (localmodel is a drop-in for KServe's local
model cache, so its CRDs may replace KServe's on a running cluster).

Under KServe's CRDs the apiserver prunes the additive status fields and the agent writes
`status.modelStatus` only. When localmodel's CRDs replace them, the same agent process finds
out within `PRUNE_RECHECK_PASSES` resync periods and writes the whole status, without a restart.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane
from localmodel.node.status import PRUNE_RECHECK_PASSES
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents, install_crds, installed_flavor
from tests.node.models import make_model, model_dir, tree_digests

MiB = 2**20
#: tests/node/cluster.py writes reconcilationFrequencyInSecs: 1.
RESYNC_SECONDS = 1


@pytest.fixture
def kserve_cluster(agent_kube: ControlPlane, agent_client: Client, tmp_path: Path) -> Iterator[ClusterAgents]:
    install_crds(agent_kube, "kserve")
    harness = ClusterAgents(agent_kube, agent_client, tmp_path, "kserve")
    try:
        yield harness
    finally:
        harness.close()
        install_crds(agent_kube, "localmodel")


def test_an_agent_writes_the_whole_status_once_localmodels_crds_replace_kserves(
        kserve_cluster: ClusterAgents, agent_kube: ControlPlane, tmp_path: Path) -> None:
    cluster = kserve_cluster
    folder = tmp_path / "sources" / "m"
    digests = make_model(folder, {"w.bin": MiB})
    node = cluster.node([{"sourceModelUri": folder.as_uri(), "modelName": "m", "namespace": ""}])
    agent = cluster.start_agent(node)
    status = cluster.wait_phase(node, "m", "ModelDownloaded", agent)
    wait_until(lambda: "prunes localmodel's status fields" in agent.log_text(),
               "the agent to notice KServe's CRDs", agent=agent)
    assert set(cluster.status(node)) == {"modelStatus"}, status

    install_crds(agent_kube, "localmodel")
    assert installed_flavor(agent_kube) == "localmodel"
    status = wait_until(lambda: (s := cluster.status(node)).get("modelDetails") and s,
                        "the whole status under localmodel's CRDs", agent=agent,
                        timeout=PRUNE_RECHECK_PASSES * RESYNC_SECONDS + 60)
    assert agent.running(), "the same agent, not a restart"
    assert "keeps localmodel's status fields now" in agent.log_text()
    assert status["modelStatus"] == {"m": "ModelDownloaded"}
    assert status["modelsDownloaded"] == 1
    assert status["modelDetails"]["m"]["bytesTotal"] == MiB
    assert status["observedGeneration"] == cluster.get(node)["metadata"]["generation"]
    assert tree_digests(model_dir(cluster.root(node), folder.as_uri())) == digests
