"""Group membership and reference indexes: incremental updates give what a full scan gives."""

from localmodel.controller.affinity import selector_terms
from localmodel.controller.names import CacheRef
from localmodel.controller.state import Membership, RefIndex

from .factories import group_obj, node


def terms(name, label="pool"):  # type: ignore[no-untyped-def]
    return selector_terms(group_obj(name, label=label)["spec"]["persistentVolumeSpec"])


def test_nodes_and_groups_in_any_order_give_the_same_membership() -> None:
    a = Membership()
    assert a.set_node("n1", node("n1", pool="gpu")) == set()
    assert a.set_group("gpu", terms("gpu")) == {"n1"}
    b = Membership()
    b.set_group("gpu", terms("gpu"))
    assert b.set_node("n1", node("n1", pool="gpu")) == {"gpu"}
    assert a.members("gpu") == b.members("gpu") == {"n1"}
    assert a.groups_of("n1") == {"gpu"}


def test_relabel_moves_node_and_reports_both_groups() -> None:
    m = Membership()
    m.set_group("gpu", terms("gpu"))
    m.set_group("cpu", terms("cpu"))
    m.set_node("n1", node("n1", pool="gpu"))
    assert m.set_node("n1", node("n1", pool="cpu")) == {"gpu", "cpu"}
    assert m.members("gpu") == set() and m.members("cpu") == {"n1"}
    assert m.set_node("n1", node("n1", False, pool="cpu")) == set()  # readiness is not membership
    assert m.node("n1").ready is False


def test_overlapping_groups_and_removals() -> None:
    m = Membership()
    m.set_group("gpu", terms("gpu"))
    m.set_group("all", selector_terms({"nodeAffinity": {"required": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "Exists"}]}]}}}))
    m.set_node("n1", node("n1", pool="gpu"))
    m.set_node("n2", node("n2", pool="cpu"))
    assert m.groups_of("n1") == {"gpu", "all"}
    assert [n.name for n in m.member_nodes(["gpu", "all"])] == ["n1", "n2"]
    assert m.set_group("gpu", None, present=False) == {"n1"}
    assert m.groups_of("n1") == {"all"}
    assert m.set_node("n2", None) == {"all"}
    assert m.members("all") == {"n1"}


def test_ref_index() -> None:
    idx: RefIndex[str] = RefIndex()
    a, b = CacheRef("", "a"), CacheRef("ns", "b")
    assert idx.set("n1", [a, b]) == {a, b}
    assert idx.set("n2", [a]) == {a}
    assert idx.get(a) == {"n1", "n2"}
    assert idx.set("n1", [b]) == {a}
    assert idx.set("n1", []) == {b}
    assert idx.get(b) == set() and idx.get(a) == {"n2"}
