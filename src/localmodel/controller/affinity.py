"""Node selector terms, as the scheduler evaluates them for a PV's `nodeAffinity.required`.

A LocalModelNodeGroup's members are the nodes its PV would be usable on (KServe's C5). Terms are
ORed, requirements inside a term are ANDed, an empty term matches nothing, and a group without
`nodeAffinity.required` matches no node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _int(text: str) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _requirement_matches(req: Mapping[str, Any], values_by_key: Mapping[str, str]) -> bool:
    key = req.get("key", "")
    operator = req.get("operator", "")
    values: Sequence[str] = req.get("values") or []
    present = key in values_by_key
    value = values_by_key.get(key)
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        have, want = _int(value or ""), _int(values[0])
        if have is None or want is None:
            return False
        return have > want if operator == "Gt" else have < want
    return False  # unknown operator: the apiserver would have rejected it


def term_matches(term: Mapping[str, Any], node_name: str, labels: Mapping[str, str]) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    if not all(_requirement_matches(req, labels) for req in expressions):
        return False
    # matchFields supports metadata.name only (the apiserver validates this).
    return all(_requirement_matches(req, {"metadata.name": node_name}) for req in fields)


def selector_terms(pv_spec: Mapping[str, Any] | None) -> list[Mapping[str, Any]] | None:
    """The `nodeSelectorTerms` of a PV spec's required node affinity, or None when there is none."""
    required = ((pv_spec or {}).get("nodeAffinity") or {}).get("required")
    if not required:
        return None
    return list(required.get("nodeSelectorTerms") or [])


def node_matches(terms: Sequence[Mapping[str, Any]] | None, node_name: str,
                 labels: Mapping[str, str]) -> bool:
    if not terms:
        return False
    return any(term_matches(term, node_name, labels) for term in terms)
