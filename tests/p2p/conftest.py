"""Fixtures for peer-to-peer tests: the agent identity on the shared apiserver."""

from __future__ import annotations

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane
from tests.p2p.peers import Identity, agent_identity


@pytest.fixture(scope="session")
def identity(kube: ControlPlane, kube_client: Client) -> Identity:
    """The shipped agent RBAC applied, a reviewer with the agent's own rights, peer tokens."""
    return agent_identity(kube, kube_client)
