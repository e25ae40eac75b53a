"""KServe's defects, fixed: each test fails on KServe's behaviour (issue numbers in kserve/kserve)."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Node, PersistentVolume
from lightkube.types import PatchType

from localmodel.api.keys import storage_key
from localmodel.kube import resources

from .harness import (
    absent,
    cache_status,
    create_cache,
    create_group,
    create_node,
    deleted,
    get_cache,
    label_node,
    lmn_models,
    node_labels,
    report_model,
    set_ready,
    unique,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("webhooks_active")
GI = 2**30


def setup(client: Client, groups: int = 1, nodes: int = 2, **cache_spec: Any) -> tuple[list[str], list[str], str]:
    group_names = [unique(f"g{i}") for i in range(groups)]
    for group in group_names:
        create_group(client, group)
    node_names = []
    for i in range(nodes):
        name = unique(f"n{i}")
        create_node(client, name, {"pool": group_names[i % groups]})
        node_names.append(name)
    cache = unique("c")
    create_cache(client, cache, f"s3://b/{cache}", group_names, **cache_spec)
    for node in node_names:
        wait_for(lambda node=node: cache in lmn_models(client, node), f"entry on {node}")
    return group_names, node_names, cache


def test_deleted_node_leaves_status_and_its_local_model_node_goes(kube_client: Client) -> None:  # 6159
    _, (n1, n2), cache = setup(kube_client)
    for node in (n1, n2):
        report_model(kube_client, node, {cache: "ModelDownloaded"})
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("available") == 2, "2 copies")
    kube_client.delete(Node, n2)
    wait_for(lambda: cache_status(kube_client, cache)["nodeStatus"] == {n1: "NodeDownloaded"}, "n2 out of status")
    assert cache_status(kube_client, cache)["copies"] == {"available": 1, "total": 1, "failed": 0}
    wait_for(lambda: absent(lambda: kube_client.get(resources.LocalModelNode, n2)), "orphan LocalModelNode deleted")


def test_group_removed_from_spec_loses_its_entries_and_volumes(kube_client: Client) -> None:
    (g1, g2), (n1, n2), cache = setup(kube_client, groups=2)
    wait_for(lambda: kube_client.get(PersistentVolume, f"{cache}-{g2}-download"), "g2 download PV")
    kube_client.patch(resources.LocalModelCache, cache, {"spec": {"nodeGroups": [g1]}}, patch_type=PatchType.MERGE)
    wait_for(lambda: lmn_models(kube_client, n2) == set(), "entry removed from the g2 node")
    assert lmn_models(kube_client, n1) == {cache}
    wait_for(lambda: set(cache_status(kube_client, cache)["nodeStatus"]) == {n1}, "status only g1")
    wait_for(lambda: deleted(lambda: kube_client.get(PersistentVolume, f"{cache}-{g2}-download")),
             "g2 download PV deleted")


def test_cache_deleted_after_its_group(kube_client: Client) -> None:  # 6154
    (group,), (n1, _), cache = setup(kube_client)
    kube_client.delete(resources.LocalModelNodeGroup, group)
    wait_for(lambda: lmn_models(kube_client, n1) == set(), "entries of a deleted group removed")
    kube_client.delete(resources.LocalModelCache, cache)
    wait_for(lambda: absent(lambda: get_cache(kube_client, cache)), "cache not stuck Terminating")


def test_group_status_from_agent_reports(kube_client: Client) -> None:  # 6137
    (group,), (n1, n2), cache = setup(kube_client)
    report_model(kube_client, n1, {cache: "ModelDownloaded"},
                 disk={"capacityBytes": 500 * GI, "usedBytes": 30 * GI, "freeBytes": 400 * GI})
    report_model(kube_client, n2, {cache: "ModelDownloading"},
                 modelDetails={cache: {"bytesTotal": 3 * GI}},
                 disk={"capacityBytes": 500 * GI, "usedBytes": 10 * GI, "freeBytes": 50 * GI})
    wait_for(lambda: (kube_client.get(resources.LocalModelNodeGroup, group).get("status") or {}) ==
             {"used": "30Gi", "available": "50Gi"}, "group status used/available")


def test_not_ready_node_status_is_updated(kube_client: Client) -> None:
    _, (n1, _), cache = setup(kube_client)
    report_model(kube_client, n1, {cache: "ModelDownloaded"})
    wait_for(lambda: cache_status(kube_client, cache)["nodeStatus"].get(n1) == "NodeDownloaded", "downloaded")
    set_ready(kube_client, n1, False)
    wait_for(lambda: cache_status(kube_client, cache)["nodeStatus"].get(n1) == "NodeNotReady", "NotReady shown")
    assert lmn_models(kube_client, n1) == {cache}  # its files are kept while it is away


def test_every_group_triggers_on_node_events(kube_client: Client) -> None:
    (g1, g2), _, cache = setup(kube_client, groups=2)
    late = unique("late")
    create_node(kube_client, late, {"pool": g2})  # joins the cache's SECOND group
    wait_for(lambda: lmn_models(kube_client, late) == {cache}, "second-group node gets the model")
    wait_for(lambda: late in cache_status(kube_client, cache)["nodeStatus"], "and is in status")


def test_node_that_stops_matching_loses_the_entry(kube_client: Client) -> None:
    _, (n1, n2), cache = setup(kube_client)
    label_node(kube_client, n2, {"pool": "elsewhere"})
    wait_for(lambda: lmn_models(kube_client, n2) == set(), "entry removed after relabel")
    wait_for(lambda: set(cache_status(kube_client, cache)["nodeStatus"]) == {n1}, "status follows")


def test_status_written_in_one_patch(kube_client: Client) -> None:
    """nodeStatus and copies never disagree in any stored version of the cache."""
    _, (n1, n2), cache = setup(kube_client)
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("total") == 2, "initial status")
    seen: list[dict[str, Any]] = []
    start = get_cache(kube_client, cache)["metadata"]["resourceVersion"]
    report_model(kube_client, n1, {cache: "ModelDownloaded"})
    report_model(kube_client, n2, {cache: "ModelDownloadError"})
    wait_for(lambda: cache_status(kube_client, cache)["copies"] == {"available": 1, "total": 2, "failed": 1},
             "final copies")
    final = get_cache(kube_client, cache)["metadata"]["resourceVersion"]
    for _, obj in kube_client.watch(resources.LocalModelCache, resource_version=start,
                                    fields={"metadata.name": cache}):
        seen.append(dict(obj.get("status") or {}))
        if obj["metadata"]["resourceVersion"] == final:
            break
    for status in seen:
        values = list(status["nodeStatus"].values())
        assert status["copies"] == {"available": values.count("NodeDownloaded"), "total": len(values),
                                    "failed": values.count("NodeDownloadError")}


def test_model_label_follows_the_download(kube_client: Client) -> None:
    _, (n1, _), cache = setup(kube_client)
    label = f"model.localmodel.kserve.io/{storage_key(f's3://b/{cache}')}"
    report_model(kube_client, n1, {cache: "ModelDownloaded"})
    wait_for(lambda: node_labels(kube_client, n1).get(label) == "true", "label while downloaded")
    report_model(kube_client, n1, {cache: "ModelDownloading"})
    wait_for(lambda: label not in node_labels(kube_client, n1), "label removed when not complete")
    report_model(kube_client, n1, {cache: "ModelDownloaded"})
    wait_for(lambda: node_labels(kube_client, n1).get(label) == "true", "label back")
    kube_client.delete(resources.LocalModelCache, cache)
    wait_for(lambda: label not in node_labels(kube_client, n1), "label removed when the model is gone")
