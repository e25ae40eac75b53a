"""Fixtures for the packaging tests: helm (built from Go modules once per machine), kubectl
(from the project's control-plane build), and renderers for the chart and the kustomize base.

Both builds run when collection finishes, outside any test's timeout, as tests/kube_cluster.py
does for the control plane: cold, they take minutes; cached, milliseconds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from localmodel.dev.build import ensure_built
from tests.packaging import manifests

REPO = Path(__file__).resolve().parents[2]

Render = Callable[..., list[dict[str, Any]]]

#: Fixtures that need the control-plane binaries (kubectl, kube-apiserver).
_CONTROLPLANE_FIXTURES = frozenset({"kustomize_objects", "kustomize_cert_manager_objects",
                                    "packaging_cluster"})


def build_helm() -> Path:
    """hack/build-helm.sh: helm in ~/.cache/localmodel, built on first use."""
    done = subprocess.run(["bash", str(REPO / "hack" / "build-helm.sh")], capture_output=True,
                          text=True, timeout=1800, check=False)
    if done.returncode != 0:
        pytest.fail(f"hack/build-helm.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def pytest_collection_finish(session: pytest.Session) -> None:
    wanted = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    if "helm" in wanted:
        build_helm()
    if wanted & _CONTROLPLANE_FIXTURES:
        ensure_built()


@pytest.fixture(scope="session")
def helm() -> Path:
    return build_helm()


@pytest.fixture(scope="session")
def kubectl_binary() -> Path:
    return Path(ensure_built().kubectl)


@pytest.fixture(scope="session")
def render_chart(helm: Path) -> Render:
    """`render_chart(values={...}, include_crds=False)`: the chart's objects for those values."""

    def render(values: Mapping[str, Any] | None = None, *, include_crds: bool = False) -> list[dict[str, Any]]:
        return manifests.load_documents(
            manifests.helm_template(helm, REPO / "charts" / "localmodel", values or {},
                                    include_crds=include_crds)
        )

    return render


def _kustomize(kubectl: Path, directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([str(kubectl), "kustomize", str(directory)],
                          capture_output=True, text=True, timeout=120, check=True)
    return manifests.load_documents(done.stdout)


@pytest.fixture(scope="session")
def kustomize_objects(kubectl_binary: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/` creates, as `kubectl kustomize` renders them."""
    return _kustomize(kubectl_binary, REPO / "deploy")


@pytest.fixture(scope="session")
def kustomize_cert_manager_objects(kubectl_binary: Path) -> list[dict[str, Any]]:
    """The optional overlay deploy/cert-manager/ (the webhook serving certificate)."""
    return _kustomize(kubectl_binary, REPO / "deploy" / "cert-manager")
