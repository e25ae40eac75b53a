"""Cache status: nodeStatus, copies and consumers (C6, C7, C10 and the #6159 fix)."""

import pytest

from localmodel.kube.patches import merge_patch
from localmodel.controller.plan_status import copies, desired_status, node_statuses
from localmodel.controller.views import Consumer

from .factories import cache, node

C = cache("llama")
NSC = cache("llama", namespace="team")


def lookup(table):  # type: ignore[no-untyped-def]
    return lambda name: table.get(name)


@pytest.mark.parametrize(
    ("model_status", "expected"),
    [
        ("ModelDownloaded", "NodeDownloaded"),
        ("ModelDownloading", "NodeDownloading"),
        ("ModelDownloadPending", "NodeDownloadPending"),
        ("ModelDownloadError", "NodeDownloadError"),
        ("", "NodeDownloadPending"),
        (None, "NodeDownloadPending"),
        ("SomethingNew", "NodeDownloadPending"),
    ],
)
def test_model_status_maps_to_node_status(model_status, expected) -> None:  # type: ignore[no-untyped-def]
    statuses = {"n1": {"llama": model_status}} if model_status is not None else {}
    assert node_statuses(C, [node("n1")], lookup(statuses)) == {"n1": expected}


def test_namespaced_cache_reads_its_namespace_slash_name_key() -> None:
    statuses = {"n1": {"llama": "ModelDownloadError", "team/llama": "ModelDownloaded"}}
    assert node_statuses(NSC, [node("n1")], lookup(statuses)) == {"n1": "NodeDownloaded"}
    assert node_statuses(C, [node("n1")], lookup(statuses)) == {"n1": "NodeDownloadError"}


def test_not_ready_node_reads_not_ready_even_with_the_model() -> None:
    statuses = {"n1": {"llama": "ModelDownloaded"}}
    assert node_statuses(C, [node("n1", ready=False)], lookup(statuses)) == {"n1": "NodeNotReady"}


def test_copies_count_the_whole_map() -> None:
    status = {"a": "NodeDownloaded", "b": "NodeDownloaded", "c": "NodeDownloadError", "d": "NodeNotReady"}
    assert copies(status) == {"available": 2, "total": 4, "failed": 1}
    assert copies({}) == {"available": 0, "total": 0, "failed": 0}


def test_deleted_node_leaves_node_status_and_the_patch_removes_it() -> None:
    before = desired_status({"n1": "NodeDownloaded", "n2": "NodeDownloaded"}, [], [])
    members = [node("n1")]  # n2 was deleted
    after = desired_status(node_statuses(C, members, lookup({"n1": {"llama": "ModelDownloaded"}})), [], [])
    assert after["copies"] == {"available": 1, "total": 1, "failed": 0}
    assert merge_patch(before, after) == {"nodeStatus": {"n2": None},
                                          "copies": {"available": 1, "total": 1}}


def test_consumers_sorted_and_empty_lists_omitted() -> None:
    isvcs = [Consumer("InferenceService", "b", "x", None), Consumer("InferenceService", "a", "y", None),
             Consumer("InferenceService", "a", "y", None)]
    status = desired_status({}, isvcs, [])
    assert status["inferenceServices"] == [{"name": "y", "namespace": "a"}, {"name": "x", "namespace": "b"}]
    assert "llmInferenceServices" not in status
    # a consumer gone: the merge patch nulls the list out
    assert merge_patch(status, desired_status({}, [], [])) == {"inferenceServices": None}


def test_unchanged_status_gives_empty_patch() -> None:
    status = desired_status({"n1": "NodeDownloaded"}, [], [])
    assert merge_patch(status, desired_status({"n1": "NodeDownloaded"}, [], [])) == {}
