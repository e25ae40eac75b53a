"""Which entries a LocalModelNode lists: KServe's C6 plus the drift fixes, table-driven."""

import pytest

from localmodel.controller.plan_nodes import assigned_group, entries_changed, plan_entries, wanted_entries

from .factories import cache

A = cache("a", "s3://b/a", ["gpu", "cpu"])
B = cache("b", "s3://b/b", ["cpu"])
NS = cache("a", "s3://b/a", ["gpu"], namespace="team")
GONE = cache("gone", "s3://b/gone", ["gpu"], deleting=True)


def info(c, group):  # type: ignore[no-untyped-def]
    return c.local_model_info(group)


@pytest.mark.parametrize(
    ("groups_of_node", "expected"),
    [
        (["gpu"], "gpu"),
        (["cpu"], "cpu"),
        (["cpu", "gpu"], "gpu"),  # the cache's own order decides, not the node's
        (["other"], None),
        ([], None),
    ],
)
def test_assigned_group_is_first_of_the_cache(groups_of_node, expected) -> None:  # type: ignore[no-untyped-def]
    assert assigned_group(A, groups_of_node) == expected


def test_wanted_entries_cover_cluster_and_namespaced_caches_and_skip_deleting_ones() -> None:
    wanted = wanted_entries(["gpu"], [A, B, NS, GONE])
    assert set(wanted) == {A.ref, NS.ref}
    assert wanted[A.ref] == {"sourceModelUri": "s3://b/a", "modelName": "a", "namespace": "", "nodeGroup": "gpu"}
    assert wanted[NS.ref]["namespace"] == "team"


CASES = {
    "new node gets every entry": ([], {A.ref: info(A, "gpu"), B.ref: info(B, "cpu")}, True,
                                  [info(A, "gpu"), info(B, "cpu")]),
    "unchanged node keeps its list": ([info(B, "cpu"), info(A, "gpu")], {A.ref: info(A, "gpu"), B.ref: info(B, "cpu")},
                                      True, [info(B, "cpu"), info(A, "gpu")]),
    "changed group updates in place": ([info(A, "cpu"), info(B, "cpu")], {A.ref: info(A, "gpu"), B.ref: info(B, "cpu")},
                                       True, [info(A, "gpu"), info(B, "cpu")]),
    "entry of a cache no longer wanted is removed": ([info(A, "gpu"), info(B, "cpu")], {B.ref: info(B, "cpu")}, True,
                                                     [info(B, "cpu")]),
    "not ready node gets no new entry": ([info(B, "cpu")], {A.ref: info(A, "gpu"), B.ref: info(B, "cpu")}, False,
                                         [info(B, "cpu")]),
    "not ready node still loses unwanted entries": ([info(A, "gpu")], {}, False, []),
    "duplicates collapse": ([info(A, "gpu"), info(A, "gpu")], {A.ref: info(A, "gpu")}, True, [info(A, "gpu")]),
    "cluster and namespaced caches of one name are distinct": (
        [info(A, "gpu")], {A.ref: info(A, "gpu"), NS.ref: info(NS, "gpu")}, True, [info(A, "gpu"), info(NS, "gpu")]),
}


@pytest.mark.parametrize(("current", "wanted", "ready", "expected"), CASES.values(), ids=CASES.keys())
def test_plan_entries(current, wanted, ready, expected) -> None:  # type: ignore[no-untyped-def]
    assert plan_entries(current, wanted, ready) == expected


def test_entries_changed_ignores_field_spelling_kserve_treats_as_equal() -> None:
    kserve_written = {"sourceModelUri": "s3://b/a", "modelName": "a", "nodeGroup": "gpu"}  # namespace omitted
    assert not entries_changed([kserve_written], [info(A, "gpu")])
    assert entries_changed([kserve_written], [info(A, "cpu")])
    assert entries_changed([], [info(A, "gpu")])


def test_service_account_and_storage_changes_are_updates() -> None:
    with_sa = cache("a", "s3://b/a", ["gpu"], serviceAccountName="sa", storage={"key": "k"})
    planned = plan_entries([info(A, "gpu")], {A.ref: info(with_sa, "gpu")}, True)
    assert planned == [{"sourceModelUri": "s3://b/a", "modelName": "a", "namespace": "", "nodeGroup": "gpu",
                        "serviceAccountName": "sa", "storage": {"key": "k"}}]
