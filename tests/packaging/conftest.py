"""Fixtures for the packaging tests: the helm binary (built from Go modules once per machine)
and renderers for the chart and the kustomize base."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.packaging import manifests

REPO = Path(__file__).resolve().parents[2]

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm() -> Path:
    """helm, built by hack/build-helm.sh into ~/.cache/localmodel (minutes the first time)."""
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "build-helm.sh")],
        capture_output=True, text=True, timeout=1800, check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"hack/build-helm.sh failed:\n{done.stderr[-4000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def render_chart(helm: Path) -> Render:
    """`render_chart(values={...}, include_crds=False)`: the chart's objects for those values."""

    def render(values: Mapping[str, Any] | None = None, *, include_crds: bool = False) -> list[dict[str, Any]]:
        return manifests.load_documents(
            manifests.helm_template(helm, REPO / "charts" / "localmodel", values or {},
                                    include_crds=include_crds)
        )

    return render


@pytest.fixture(scope="session")
def kustomize_objects() -> list[dict[str, Any]]:
    """The objects `kubectl apply -k deploy/` creates."""
    return manifests.kustomize_build(REPO / "deploy")
