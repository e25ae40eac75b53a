"""CustomResourceDefinitions generated from `types`, with printer columns KServe lacks.

`deploy/crds/` and `charts/localmodel/crds/` hold the output of `render_all()`; tests fail when
either differs, so the YAML can never drift from the types. Regenerate both with `make crds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from localmodel.api import types

# Keys of pydantic's JSON schema that have no place in a structural CRD schema.
_DROPPED_KEYS = {"title", "default", "$defs"}


@dataclass(frozen=True)
class Kind:
    model: type[BaseModel]
    kind: str
    plural: str
    scope: str
    status_subresource: bool
    columns: tuple[dict[str, Any], ...]
    short_names: tuple[str, ...] = ()


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
_CACHE_COLUMNS = (
    {"name": "URI", "type": "string", "jsonPath": ".spec.sourceModelUri"},
    {"name": "Size", "type": "string", "jsonPath": ".spec.modelSize"},
    {"name": "Available", "type": "integer", "jsonPath": ".status.copies.available"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.copies.total"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.copies.failed"},
    {"name": "Groups", "type": "string", "jsonPath": ".spec.nodeGroups", "priority": 1},
    _AGE,
)

KINDS: tuple[Kind, ...] = (
    Kind(types.LocalModelCache, "LocalModelCache", "localmodelcaches", "Cluster", True,
         _CACHE_COLUMNS, ("lmc",)),
    Kind(types.LocalModelNamespaceCache, "LocalModelNamespaceCache", "localmodelnamespacecaches",
         "Namespaced", True, _CACHE_COLUMNS, ("lmnc",)),
    Kind(types.LocalModelNodeGroup, "LocalModelNodeGroup", "localmodelnodegroups", "Cluster",
         False, (
             {"name": "Limit", "type": "string", "jsonPath": ".spec.storageLimit"},
             {"name": "Used", "type": "string", "jsonPath": ".status.used"},
             {"name": "Available", "type": "string", "jsonPath": ".status.available"},
             _AGE,
         ), ("lmng",)),
    Kind(types.LocalModelNode, "LocalModelNode", "localmodelnodes", "Cluster", True, (
        {"name": "Models", "type": "string", "jsonPath": ".spec.localModels[*].modelName"},
        {"name": "Downloaded", "type": "integer", "jsonPath": ".status.modelsDownloaded"},
        {"name": "Free", "type": "integer", "jsonPath": ".status.disk.freeBytes", "priority": 1},
        _AGE,
    ), ("lmn",)),
)


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a Kubernetes structural schema.

    Inlines `$ref`s, turns `Optional[X]` (anyOf X|null) into X, and drops keys the apiserver
    rejects or that only matter to Python.
    """
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    any_of = node.get("anyOf")
    if any_of and any(branch == {"type": "null"} for branch in any_of):
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        others = {k: v for k, v in node.items() if k != "anyOf"}
        if len(rest) == 1:
            return _structural({**rest[0], **others}, defs)
        return _structural({**others, "anyOf": rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "minItems" or key == "maxItems":
            out[key] = value
        else:
            out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" in out and not out.get("required"):
        out.pop("required", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The openAPIV3Schema of a top-level kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _structural(raw, raw.get("$defs", {}))
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"type": "object"}
    schema.pop("required", None)
    schema.pop("description", None)
    return _sorted(schema)


def _sorted(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _sorted(node[k]) for k in sorted(node)}
    if isinstance(node, list):
        return [_sorted(item) for item in node]
    return node


def crd(kind: Kind) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": types.VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(kind.model)},
        "additionalPrinterColumns": list(kind.columns),
    }
    if kind.status_subresource:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{types.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "localmodel"},
        },
        "spec": {
            "group": types.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["kserve", "localmodel"],
            },
            "scope": kind.scope,
            "versions": [version],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated by `localmodel crds --write deploy/crds` from localmodel.api.types.\n"
    return header + "---\n" + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def file_name(kind: Kind) -> str:
    return f"{types.GROUP}_{kind.plural}.yaml"


def render_all() -> dict[str, str]:
    """File name → YAML text for every CRD."""
    return {file_name(kind): render(kind) for kind in KINDS}
