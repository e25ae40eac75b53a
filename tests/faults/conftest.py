"""Fixtures of the fault suite: a control plane of its own, and the agents that run against it.

The suite runs its own etcd + kube-apiserver, configured for faults the shared one must not see:

- etcd is compacted every second and the watch cache is off, so a watch resumed from an old
  resourceVersion really gets 410 Gone (as after a long outage in a busy cluster);
- an audit log records every request of the agent's and the controller's ServiceAccounts, so the
  RBAC test can list what each really used;
- tests may stop its apiserver for 30 s without disturbing the rest of the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig

from localmodel.dev.build import ensure_built
from localmodel.dev.controlplane import ControlPlane
from tests.faults import figures
from tests.node.cluster import ClusterAgents, install_crds

#: Users whose requests the audit log keeps (the agent's and the controller's ServiceAccounts).
AUDITED_USERS = (
    "system:serviceaccount:kserve:kserve-localmodelnode-agent",
    "system:serviceaccount:kserve:kserve-localmodel-controller-manager",
)

_AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    users: [{users}]
  - level: None
"""


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build the control plane outside any test's timeout (minutes cold, instant when cached).
    if any("fault_plane" in getattr(item, "fixturenames", ()) for item in session.items):
        ensure_built()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    measured = figures.snapshot()
    if not measured:
        return
    terminalreporter.section("fault suite figures")
    for section, values in sorted(measured.items()):
        terminalreporter.write_line(f"[{section}]")
        for name, value in sorted(values.items()):
            terminalreporter.write_line(f"  {name}: {value}")
    written = figures.write_if_asked()
    if written is not None:
        terminalreporter.write_line(f"figures written to {written}")


class FaultPlane(ControlPlane):
    """The suite's control plane, with the path of its audit log."""

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"


@pytest.fixture(scope="session")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultPlane]:
    workdir = tmp_path_factory.mktemp("fault-plane")
    policy = workdir / "audit-policy.yaml"
    policy.write_text(_AUDIT_POLICY.format(users=", ".join(f'"{u}"' for u in AUDITED_USERS)))
    plane = FaultPlane(workdir, apiserver_args=[
        "--etcd-compaction-interval=1s",
        "--watch-cache=false",
        f"--audit-policy-file={policy}",
        f"--audit-log-path={workdir / 'audit.log'}",
        "--audit-log-format=json",
    ])
    with plane:
        install_crds(plane, "localmodel")
        yield plane


@pytest.fixture(scope="session")
def fault_client(fault_plane: FaultPlane) -> Client:
    return Client(KubeConfig.from_file(fault_plane.kubeconfig), field_manager="localmodel-fault-tests")


@pytest.fixture
def agents(fault_plane: FaultPlane, fault_client: Client, tmp_path: Path) -> Iterator[ClusterAgents]:
    """Per-test namespaces, LocalModelNodes and agent processes on the fault control plane."""
    harness = ClusterAgents(fault_plane, fault_client, tmp_path, "localmodel")
    harness.allow_local_sources = False  # the DaemonSet's default
    yield harness
    harness.close()
