"""Generated CRDs: committed YAML is current, and every KServe field is kept as KServe has it."""

from typing import Any

import pytest
import yaml

from localmodel.api.crds import KINDS, crd, file_name, render_all

from tests.reference import REPO, kserve_reference


def test_committed_crds_match_generator() -> None:
    for name, text in render_all().items():
        committed = (REPO / "deploy" / "crds" / name).read_text()
        assert committed == text, f"deploy/crds/{name} is stale: run `localmodel crds --write deploy/crds`"


def _kserve(kind_file: str) -> dict[str, Any]:
    path = kserve_reference() / "crds" / kind_file
    if not path.exists():
        pytest.fail(f"KServe reference CRD missing: {path}")
    return yaml.safe_load(path.read_text())


def _walk(kserve: dict[str, Any], ours: dict[str, Any], path: str) -> list[str]:
    """Differences where ours would reject or change what KServe's schema accepts."""
    problems: list[str] = []
    if ours.get("x-kubernetes-preserve-unknown-fields"):
        return problems  # ours accepts any object here; the apiserver validates it on use
    for key in ("type", "enum", "pattern", "x-kubernetes-int-or-string", "anyOf",
                "x-kubernetes-validations"):
        if kserve.get(key) != ours.get(key):
            problems.append(f"{path}: {key} {kserve.get(key)!r} != {ours.get(key)!r}")
    if set(ours.get("required", [])) - set(kserve.get("required", [])):
        problems.append(f"{path}: extra required {ours.get('required')}")
    if kserve.get("minItems") != ours.get("minItems"):
        problems.append(f"{path}: minItems {kserve.get('minItems')} != {ours.get('minItems')}")
    for name, sub in kserve.get("properties", {}).items():
        if name not in ours.get("properties", {}):
            problems.append(f"{path}.{name}: missing")
            continue
        problems += _walk(sub, ours["properties"][name], f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(kserve.get(key), dict):
            problems += _walk(kserve[key], ours.get(key) or {}, f"{path}[{key}]")
    return problems


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_keeps_every_kserve_field(kind) -> None:  # type: ignore[no-untyped-def]
    theirs = _kserve(file_name(kind))
    ours = crd(kind)
    assert ours["spec"]["scope"] == theirs["spec"]["scope"]
    assert ours["spec"]["names"]["kind"] == theirs["spec"]["names"]["kind"]
    assert ours["spec"]["names"]["plural"] == theirs["spec"]["names"]["plural"]
    their_version, our_version = theirs["spec"]["versions"][0], ours["spec"]["versions"][0]
    assert our_version["name"] == their_version["name"] == "v1alpha1"
    assert ("subresources" in our_version) == ("subresources" in their_version)
    problems = _walk(
        their_version["schema"]["openAPIV3Schema"], our_version["schema"]["openAPIV3Schema"], ""
    )
    assert problems == []


def test_printer_columns_present() -> None:
    for kind in KINDS:
        columns = crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
        assert {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"} in columns
