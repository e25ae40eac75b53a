"""The controller's /metrics endpoint and its Events, on the real apiserver."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest
from lightkube import ApiError, Client

from tests.node.agent_process import metric_value

from .harness import (
    RunningController,
    cache_status,
    create_cache,
    create_group,
    create_node,
    events_about,
    report_model,
    unique,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("webhooks_active")


def scrape(controller: RunningController) -> str:
    assert controller.manager is not None and controller.manager.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{controller.manager.metrics_port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def cache_events(client: Client, cache: str, namespace: str = "default") -> list[dict[str, Any]]:
    return events_about(client, cache, namespace)


def reasons(client: Client, cache: str, namespace: str = "default") -> list[str]:
    return [e["reason"] for e in cache_events(client, cache, namespace)]


def test_events_for_a_failed_node_and_complete_copies(kube_client: Client) -> None:
    group = unique("ev")
    create_group(kube_client, group)
    nodes = [unique("evn"), unique("evn")]
    for node in nodes:
        create_node(kube_client, node, {"pool": group})
    cache = unique("evc")
    create_cache(kube_client, cache, f"s3://bucket/{cache}", [group])
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("total") == 2, "two members")

    report_model(kube_client, nodes[0], {cache: "ModelDownloadError"},
                 modelDetails={cache: {"reason": "AccessDenied", "message": "403 Forbidden"}})
    failed = wait_for(lambda: [e for e in cache_events(kube_client, cache) if e["reason"] == "NodeDownloadFailed"],
                      "NodeDownloadFailed event")
    assert failed[0]["type"] == "Warning"
    assert failed[0]["note"] == f"node {nodes[0]} failed to download the model: AccessDenied: 403 Forbidden"
    assert failed[0]["controller"] == "serving.kserve.io/localmodel-controller"

    for node in nodes:
        report_model(kube_client, node, {cache: "ModelDownloaded"})
    complete = wait_for(lambda: [e for e in cache_events(kube_client, cache) if e["reason"] == "CopiesComplete"],
                        "CopiesComplete event")
    assert complete[0]["type"] == "Normal" and "all 2 node(s)" in complete[0]["note"]
    # a transition is recorded once: another status change that keeps copies complete adds none
    report_model(kube_client, nodes[0], {cache: "ModelDownloaded", "other-model": "ModelDownloading"})
    assert reasons(kube_client, cache).count("CopiesComplete") == 1


def test_event_when_a_named_group_does_not_exist(kube_client: Client) -> None:
    cache = unique("nogroup")
    missing = unique("missing-group")
    create_cache(kube_client, cache, f"s3://bucket/{cache}", [missing])
    found = wait_for(lambda: [e for e in cache_events(kube_client, cache) if e["reason"] == "NodeGroupNotFound"],
                     "NodeGroupNotFound event")
    assert found[0]["type"] == "Warning" and missing in found[0]["note"]


def test_namespaced_cache_events_go_to_its_namespace(kube_client: Client) -> None:
    from .harness import create_namespace

    ns = create_namespace(kube_client, unique("evns"))
    group = unique("evg")
    create_group(kube_client, group)
    node = unique("evnn")
    create_node(kube_client, node, {"pool": group})
    create_cache(kube_client, "model", f"s3://bucket/{ns}", [group], namespace=ns)
    wait_for(lambda: cache_status(kube_client, "model", ns).get("copies", {}).get("total") == 1, "member")
    report_model(kube_client, node, {f"{ns}/model": "ModelDownloaded"})
    wait_for(lambda: "CopiesComplete" in reasons(kube_client, "model", ns), "event in the cache's namespace")


def test_metrics_endpoint(controller: RunningController, kube_client: Client) -> None:
    group = unique("met")
    create_group(kube_client, group, limit="2Gi")
    node = unique("metn")
    create_node(kube_client, node, {"pool": group})
    cache = unique("metc")
    create_cache(kube_client, cache, f"s3://bucket/{cache}", [group], size="1Gi")
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("total") == 1, "member")
    report_model(kube_client, node, {cache: "ModelDownloaded"})
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("available") == 1, "copies 1/1")
    with pytest.raises(ApiError):  # capacity admission refuses: 1Gi + 2Gi > 2Gi
        create_cache(kube_client, unique("toobig"), f"s3://bucket/{cache}-big", [group], size="2Gi")

    def scraped() -> str:
        text = scrape(controller)
        assert (metric_value(text, "localmodel_controller_caches", 'kind="LocalModelCache",state="complete"')
                or 0) >= 1
        return text

    text = wait_for(scraped, "a complete cache in the metrics")
    for kind in ("cache", "node", "group"):
        assert (metric_value(text, "localmodel_controller_reconciles_total", f'kind="{kind}",result="success"')
                or 0) > 0, kind
        assert metric_value(text, "localmodel_controller_reconcile_duration_seconds_count", f'kind="{kind}"')
        assert metric_value(text, "localmodel_controller_workqueue_depth", f'queue="{kind}"') is not None
    assert metric_value(text, "localmodel_controller_leader") == 1
    assert (metric_value(text, "localmodel_controller_webhook_requests_total",
                         'operation="CREATE",webhook="localmodelcache"') or 0) >= 2
    assert (metric_value(text, "localmodel_controller_webhook_denials_total",
                         'operation="CREATE",webhook="localmodelcache"') or 0) >= 1
    assert (metric_value(text, "localmodel_controller_events_total", 'reason="CopiesComplete"') or 0) >= 1
