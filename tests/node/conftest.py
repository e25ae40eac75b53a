"""Fixtures for agent tests on the real apiserver, with each CRD flavour in turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane
from tests.node.cluster import ClusterAgents, install_crds, installed_flavor


@pytest.fixture(scope="module", params=["localmodel", "kserve"])
def crd_flavor(request: pytest.FixtureRequest, kube: ControlPlane) -> Iterator[str]:
    """localmodel's CRDs, then KServe's (which prune the additive status fields)."""
    flavor = str(request.param)
    install_crds(kube, flavor)
    assert installed_flavor(kube) == flavor
    yield flavor
    if flavor != "localmodel":
        install_crds(kube, "localmodel")


@pytest.fixture
def cluster(kube: ControlPlane, kube_client: Client, crd_flavor: str, tmp_path: Path) -> Iterator[ClusterAgents]:
    harness = ClusterAgents(kube, kube_client, tmp_path, crd_flavor)
    yield harness
    harness.close()
