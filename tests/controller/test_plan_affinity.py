"""Node selector terms of a group's PV: the scheduler's matching rules, table-driven."""

import pytest

from localmodel.controller.affinity import node_matches, selector_terms

LABELS = {"pool": "gpu", "zone": "a", "cores": "8"}


@pytest.mark.parametrize(
    ("terms", "node_name", "expected"),
    [
        ([{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}], "n1", True),
        ([{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}], "n1", False),
        ([{"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["cpu"]}]}], "n1", True),
        ([{"matchExpressions": [{"key": "absent", "operator": "NotIn", "values": ["x"]}]}], "n1", True),
        ([{"matchExpressions": [{"key": "zone", "operator": "Exists"}]}], "n1", True),
        ([{"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}], "n1", False),
        ([{"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}], "n1", True),
        ([{"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}], "n1", False),
        ([{"matchExpressions": [{"key": "pool", "operator": "Gt", "values": ["4"]}]}], "n1", False),
        # requirements in a term are ANDed
        ([{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]},
                                {"key": "zone", "operator": "In", "values": ["b"]}]}], "n1", False),
        # terms are ORed
        ([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
          {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}], "n1", True),
        ([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}], "n1", True),
        ([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}], "n2", False),
        ([{}], "n1", False),  # an empty term matches nothing
        ([], "n1", False),
        (None, "n1", False),
    ],
)
def test_node_matches(terms, node_name, expected) -> None:  # type: ignore[no-untyped-def]
    assert node_matches(terms, node_name, LABELS) is expected


def test_group_without_required_affinity_selects_nothing() -> None:
    assert selector_terms({}) is None
    assert selector_terms({"nodeAffinity": {}}) is None
    assert node_matches(selector_terms({"hostPath": {"path": "/m"}}), "n1", LABELS) is False
