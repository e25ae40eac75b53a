"""Which Events a cache reconcile records (transitions only), and the copies state of metrics."""

from __future__ import annotations

from typing import Any

import pytest

from localmodel.controller.metrics import cache_state
from localmodel.controller.plan_events import CacheEvent, missing_group_event, status_events


def status(nodes: dict[str, str]) -> dict[str, Any]:
    values = list(nodes.values())
    return {"nodeStatus": nodes, "copies": {"total": len(values), "available": values.count("NodeDownloaded"),
                                            "failed": values.count("NodeDownloadError")}}


def no_detail(node: str) -> None:
    return None


def test_copies_complete_once_on_the_transition() -> None:
    before = status({"a": "NodeDownloaded", "b": "NodeDownloading"})
    after = status({"a": "NodeDownloaded", "b": "NodeDownloaded"})
    assert status_events(before, after, no_detail) == [
        CacheEvent("Normal", "CopiesComplete", "model downloaded on all 2 node(s): a, b")]
    assert status_events(after, after, no_detail) == []


def test_a_new_member_then_complete_again_is_recorded_again() -> None:
    before = status({"a": "NodeDownloaded", "b": "NodeDownloaded", "c": "NodeDownloadPending"})
    after = status({"a": "NodeDownloaded", "b": "NodeDownloaded", "c": "NodeDownloaded"})
    assert [e.reason for e in status_events(before, after, no_detail)] == ["CopiesComplete"]


def test_first_status_of_a_cache_without_nodes_records_nothing() -> None:
    assert status_events({}, status({}), no_detail) == []


def test_node_failure_carries_the_agents_reason() -> None:
    before = status({"a": "NodeDownloading", "b": "NodeDownloadError"})
    after = status({"a": "NodeDownloadError", "b": "NodeDownloadError"})
    details = {"a": {"reason": "AccessDenied", "message": "403 from s3://b/m"}}
    assert status_events(before, after, details.get) == [
        CacheEvent("Warning", "NodeDownloadFailed", "node a failed to download the model: AccessDenied: 403 from s3://b/m")]


def test_node_failure_without_details() -> None:
    events = status_events(status({"a": "NodeDownloading"}), status({"a": "NodeDownloadError"}), no_detail)
    assert events == [CacheEvent("Warning", "NodeDownloadFailed", "node a failed to download the model")]


@pytest.mark.parametrize(("before", "now", "reason"), [
    (None, ["gpu"], "NodeGroupNotFound"),
    (frozenset(), ["gpu"], "NodeGroupNotFound"),
    (frozenset({"gpu"}), ["gpu"], None),
    (frozenset({"gpu"}), ["gpu", "cpu"], "NodeGroupNotFound"),
    (frozenset({"gpu"}), [], None),
    (None, [], None),
])
def test_missing_groups_are_recorded_when_they_change(before: frozenset[str] | None, now: list[str],
                                                      reason: str | None) -> None:
    event = missing_group_event(before, now)
    assert (event.reason if event else None) == reason
    if event:
        assert event.type == "Warning" and ", ".join(sorted(now)) in event.message


@pytest.mark.parametrize(("obj", "state"), [
    ({}, "no_nodes"),
    ({"status": status({})}, "no_nodes"),
    ({"status": status({"a": "NodeDownloaded"})}, "complete"),
    ({"status": status({"a": "NodeDownloaded", "b": "NodeDownloading"})}, "partial"),
    ({"status": status({"a": "NodeDownloaded", "b": "NodeDownloadError"})}, "failed"),
    ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": status({"a": "NodeDownloaded"})},
     "deleting"),
])
def test_cache_state(obj: dict[str, Any], state: str) -> None:
    assert cache_state(obj) == state
