"""The rendered chart and the kustomize base against a real kube-apiserver: server-side apply in
dry-run mode runs every object through schema validation, defaulting and admission without
creating it.

(deploy/cert-manager/ is not dry-run: its Certificate needs cert-manager's CRDs, which are not
available here; tests/packaging/test_helm.py compares it with the chart's copy instead.)"""

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


def _accepted(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.endswith("(server dry run)")]


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
    assert len(_accepted(done.stdout)) == len(objects), done.stdout


def test_server_side_dry_run_rejects_an_invalid_value(helm: Path, packaging_cluster: ControlPlane) -> None:
    """The check above has teeth: the apiserver refuses what it would refuse on install."""
    text = _render(helm, {"controller": {"replicas": -1}})
    _create_namespaces(packaging_cluster, manifests.load_documents(text))
    done = _dry_run(packaging_cluster, text)
    assert done.returncode != 0
    assert "spec.replicas" in done.stderr


def test_kustomize_base_server_side_dry_run(packaging_cluster: ControlPlane, kubectl_binary: Path) -> None:
    """`kubectl kustomize deploy/` as `kubectl apply -k deploy/` would send it."""
    text = subprocess.run([str(kubectl_binary), "kustomize", str(REPO / "deploy")], capture_output=True,
                          text=True, timeout=120, check=True).stdout
    objects = manifests.load_documents(text)
    _create_namespaces(packaging_cluster, objects)
    done = _dry_run(packaging_cluster, text)
    assert done.returncode == 0, done.stderr
    accepted = _accepted(done.stdout)
    assert len(accepted) == len(objects), done.stdout
    kinds = {o["kind"] for o in objects}
    assert {"CustomResourceDefinition", "DaemonSet", "Deployment", "ClusterRole", "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy"} <= kinds


def test_webhook_configurations_server_side_dry_run(packaging_cluster: ControlPlane) -> None:
    """deploy/controller/webhooks.yaml on its own: the apiserver validates service references,
    paths, rules, selectors and policies of every webhook."""
    path = REPO / "deploy" / "controller" / "webhooks.yaml"
    objects = manifests.load_documents(path.read_text())
    done = packaging_cluster.kubectl("apply", "--server-side", "--dry-run=server", f"--field-manager={FIELD_MANAGER}",
                                     "-f", str(path), check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(_accepted(done.stdout)) == sorted(
        f"{o['kind'].lower()}.admissionregistration.k8s.io/{o['metadata']['name']} serverside-applied (server dry run)"
        for o in objects)
    hooks = [hook for o in objects for hook in o["webhooks"]]
    assert len(hooks) == 5


def test_webhook_configurations_dry_run_rejects_a_broken_one(packaging_cluster: ControlPlane) -> None:
    """The check above has teeth: a webhook without sideEffects is refused by the apiserver."""
    documents = manifests.load_documents((REPO / "deploy" / "controller" / "webhooks.yaml").read_text())
    del documents[0]["webhooks"][0]["sideEffects"]
    done = _dry_run(packaging_cluster, yaml.safe_dump_all(documents))
    assert done.returncode != 0
    assert "sideEffects" in done.stderr
