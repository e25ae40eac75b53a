"""Fixtures for peer-to-peer tests: the agent identity on the shared apiserver."""

from __future__ import annotations

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane
from tests.node.cluster import install_crds, installed_flavor
from tests.p2p.peers import Identity, agent_identity


def installed_flavor_or_none(kube: ControlPlane) -> str | None:
    try:
        return installed_flavor(kube)
    except Exception:  # noqa: BLE001 - no CRD installed yet
        return None


@pytest.fixture(scope="session")
def identity(kube: ControlPlane, kube_client: Client) -> Identity:
    """The shipped agent RBAC applied, a reviewer with the agent's own rights, peer tokens."""
    return agent_identity(kube, kube_client)


@pytest.fixture
def localmodel_crds(kube: ControlPlane) -> None:
    """localmodel's CRDs (they keep status.peerEndpoint; KServe's prune it)."""
    if installed_flavor_or_none(kube) != "localmodel":
        install_crds(kube, "localmodel")
