"""Rendering and comparing Kubernetes manifests for the packaging tests."""

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
