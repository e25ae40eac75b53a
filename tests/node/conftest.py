"""Fixtures for agent tests on a real apiserver of their own, with each CRD flavour in turn.

The agent tests get a control plane of their own (not the session's `kube`): in a real cluster
LocalModelNode entries are written by the controller, and a controller under test elsewhere in
the session would rewrite the hand-made entries these tests use (and switching the CRDs to
KServe's here would pull the ground from under it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig

from localmodel.dev.build import ensure_built
from localmodel.dev.controlplane import ControlPlane
from tests.node.cluster import ClusterAgents, install_crds, installed_flavor


@pytest.fixture(scope="session")
def agent_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager only for the agent tests."""
    ensure_built()
    with ControlPlane(tmp_path_factory.mktemp("agent-controlplane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def agent_client(agent_kube: ControlPlane) -> Client:
    return Client(KubeConfig.from_file(agent_kube.kubeconfig), field_manager="localmodel-tests")


@pytest.fixture(scope="module", params=["localmodel", "kserve"])
def crd_flavor(request: pytest.FixtureRequest, agent_kube: ControlPlane) -> Iterator[str]:
    """localmodel's CRDs, then KServe's (which prune the additive status fields)."""
    flavor = str(request.param)
    install_crds(agent_kube, flavor)
    assert installed_flavor(agent_kube) == flavor
    yield flavor


@pytest.fixture
def cluster(agent_kube: ControlPlane, agent_client: Client, crd_flavor: str,
            tmp_path: Path) -> Iterator[ClusterAgents]:
    harness = ClusterAgents(agent_kube, agent_client, tmp_path, crd_flavor)
    yield harness
    harness.close()
