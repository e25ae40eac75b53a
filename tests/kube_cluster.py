"""pytest plugin: one real Kubernetes control plane per test session.

Fixtures:
    kube     the running ControlPlane (admin kubeconfig at kube.kubeconfig, kube.server, ...)
    kubectl  kube.kubectl: run the matching kubectl as admin, returns CompletedProcess[str]
    kube_client  a lightkube Client authenticated as admin
    controlplane_paths  the built binaries, for tests that run a control plane of their own

The binaries are built when collection finishes and a selected test needs `kube`, outside any
test's timeout: a cold build takes minutes, a cached one milliseconds. CI builds them up front
with `python -m localmodel.dev.controlplane build`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from subprocess import CompletedProcess

import pytest
from lightkube import Client, KubeConfig

from localmodel.dev.build import Paths, built_paths, ensure_built
from localmodel.dev.controlplane import ControlPlane


def pytest_collection_finish(session: pytest.Session) -> None:
    needs = {"kube", "controlplane_paths"}
    if not any(needs & set(getattr(item, "fixturenames", ())) for item in session.items):
        return
    if built_paths() is None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("building the control plane from Go modules (once; minutes when cold)...")
    ensure_built()


@pytest.fixture(scope="session")
def controlplane_paths() -> Paths:
    """The control plane binaries, for tests that start a ControlPlane of their own."""
    return ensure_built()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with ControlPlane(tmp_path_factory.mktemp("controlplane")) as plane:
        yield plane


@pytest.fixture(scope="session")
def kubectl(kube: ControlPlane) -> Callable[..., CompletedProcess[str]]:
    return kube.kubectl


@pytest.fixture(scope="session")
def kube_client(kube: ControlPlane) -> Client:
    return Client(KubeConfig.from_file(kube.kubeconfig), field_manager="localmodel-tests")
