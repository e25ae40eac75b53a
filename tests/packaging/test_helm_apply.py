"""The rendered chart against a real kube-apiserver: server-side apply in dry-run mode runs
every object through schema validation, defaulting and admission without creating it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localmodel.dev.controlplane import ControlPlane
from tests.packaging import manifests
from tests.packaging.conftest import REPO

CHART = REPO / "charts" / "localmodel"
FIELD_MANAGER = "localmodel-chart-test"


@pytest.fixture(scope="module")
def packaging_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own: the namespaces made here stay out of the shared one."""
    with ControlPlane(tmp_path_factory.mktemp("chart-cluster"), controllers=()) as plane:
        yield plane


def _render(helm: Path, values: dict[str, Any]) -> str:
    return manifests.helm_template(helm, CHART, values, include_crds=True)


def _dry_run(cluster: ControlPlane, text: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                           f"--field-manager={FIELD_MANAGER}", "-f", "-", input=text, check=False)


def _create_namespaces(cluster: ControlPlane, objects: list[dict[str, Any]]) -> None:
    """Namespaced objects can only be dry-run into a namespace that exists."""
    names = sorted({o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]})
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
    cluster.kubectl("apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
                    input=yaml.safe_dump_all(namespaces))


@pytest.mark.parametrize("values", [
    {"namespace": {"create": True}},
    {"webhooks": {"enabled": False}},
    {"namespace": {"name": "ml-system"}, "jobNamespace": {"name": "ml-downloads"},
     "agent": {"nodeSelector": None, "hostPath": "/var/lib/models",
               "tolerations": [{"operator": "Exists"}],
               "ports": {"metrics": 9100, "health": 9101}},
     "controller": {"replicas": 2}},
], ids=["defaults", "no-webhooks", "custom-namespaces-and-nodes"])
def test_server_side_dry_run_accepts_every_object(helm: Path, packaging_cluster: ControlPlane,
                                                  values: dict[str, Any]) -> None:
    text = _render(helm, values)
    objects = manifests.load_documents(text)
    _create_namespaces(packaging_cluster, objects)
    done = _dry_run(packaging_cluster, text)
    assert done.returncode == 0, done.stderr
    accepted = [line for line in done.stdout.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), done.stdout


def test_server_side_dry_run_rejects_an_invalid_value(helm: Path, packaging_cluster: ControlPlane) -> None:
    """The check above has teeth: the apiserver refuses what it would refuse on install."""
    text = _render(helm, {"controller": {"replicas": -1}})
    _create_namespaces(packaging_cluster, manifests.load_documents(text))
    done = _dry_run(packaging_cluster, text)
    assert done.returncode != 0
    assert "spec.replicas" in done.stderr
