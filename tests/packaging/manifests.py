"""Rendering and comparing Kubernetes manifests for the packaging tests.

`kustomize_build` prefers `kubectl kustomize` from the project's control-plane build when that is
available, and otherwise reads the kustomization itself; it understands only the fields the base
uses (resources, images) and fails on any other, so it cannot silently render something else.
"""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

#: Labels the chart adds for Helm's bookkeeping; the kustomize base has no equivalent.
HELM_LABELS = frozenset({
    "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "helm.sh/chart",
})

_KUSTOMIZATION_FIELDS = frozenset({"apiVersion", "kind", "resources", "images"})

Key = tuple[str, str, str]


def load_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def helm_template(helm: Path, chart: Path, values: Mapping[str, Any], *,
                  include_crds: bool = False, release: str = "localmodel",
                  namespace: str = "kserve") -> str:
    """`helm template` with `values` passed as a values file (no --set quoting rules)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values_file:
        yaml.safe_dump(dict(values), values_file)
        values_file.flush()
        args = [str(helm), "template", release, str(chart), "--namespace", namespace,
                "--values", values_file.name]
        if include_crds:
            args.append("--include-crds")
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise HelmError(done.stderr.strip())
    return done.stdout


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


def kubectl_binary() -> Path | None:
    """kubectl from the project's control-plane build, if this tree has one and it is built."""
    try:
        from localmodel.dev.build import ensure_built  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return Path(ensure_built().kubectl)


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    kubectl = kubectl_binary()
    if kubectl is not None:
        done = subprocess.run([str(kubectl), "kustomize", str(directory)], capture_output=True,
                              text=True, timeout=120, check=True)
        return load_documents(done.stdout)
    return kustomize_build_python(directory)


def kustomize_build_python(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize` gives for a base that uses only `resources` and `images`."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(f"kustomization fields this loader does not implement: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        if path.is_dir():
            objects += kustomize_build_python(path)
        else:
            objects += load_documents(path.read_text())
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for obj in objects:
        for container in _containers(obj):
            _retag(container, images)
    return objects


def _containers(obj: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    pod_spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def _retag(container: dict[str, Any], images: Mapping[str, Mapping[str, str]]) -> None:
    name, _, tag = container["image"].partition(":")
    rule = images.get(name)
    if rule is None:
        return
    new_name = rule.get("newName", name)
    if "digest" in rule:
        container["image"] = f"{new_name}@{rule['digest']}"
    else:
        container["image"] = f"{new_name}:{rule.get('newTag', tag or 'latest')}"


def key(obj: Mapping[str, Any]) -> Key:
    """(kind, namespace, name): what identifies an object in a cluster."""
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def by_key(objects: Iterable[Mapping[str, Any]]) -> dict[Key, dict[str, Any]]:
    indexed: dict[Key, dict[str, Any]] = {}
    for obj in objects:
        if key(obj) in indexed:
            raise ValueError(f"rendered twice: {key(obj)}")
        indexed[key(obj)] = dict(obj)
    return indexed


def without_helm_labels(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `obj` without Helm's bookkeeping labels (an empty label map disappears)."""
    stripped = copy.deepcopy(dict(obj))
    labels = stripped["metadata"].get("labels")
    if labels is not None:
        for label in HELM_LABELS:
            labels.pop(label, None)
        if not labels:
            del stripped["metadata"]["labels"]
    return stripped
