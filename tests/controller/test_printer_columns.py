"""Printer columns show useful values for real objects (kubectl get)."""

from __future__ import annotations

import pytest
from lightkube import Client

from localmodel.dev.controlplane import ControlPlane

from .harness import cache_status, create_cache, create_group, create_node, report_model, unique, wait_for

pytestmark = pytest.mark.usefixtures("webhooks_active")
GI = 2**30


def table(kube: ControlPlane, *args: str) -> list[list[str]]:
    lines = kube.kubectl("get", *args).stdout.strip().splitlines()
    return [line.split() for line in lines]


def test_cache_group_and_node_columns(kube_client: Client, cluster: ControlPlane) -> None:
    group = unique("cols")
    create_group(kube_client, group, limit="20Gi")
    node = unique("coln")
    create_node(kube_client, node, {"pool": group})
    cache = unique("cols")
    create_cache(kube_client, cache, f"s3://b/{cache}", [group], size="2Gi")
    wait_for(lambda: cache_status(kube_client, cache).get("copies", {}).get("total") == 1, "status")
    report_model(kube_client, node, {cache: "ModelDownloaded"}, modelsDownloaded=1,
                 disk={"capacityBytes": 100 * GI, "usedBytes": 2 * GI, "freeBytes": 98 * GI})
    wait_for(lambda: cache_status(kube_client, cache)["copies"]["available"] == 1, "available")

    header, row = table(cluster, "localmodelcache", cache)
    assert header == ["NAME", "URI", "SIZE", "AVAILABLE", "TOTAL", "FAILED", "AGE"]
    assert row[:6] == [cache, f"s3://b/{cache}", "2Gi", "1", "1", "0"]

    wait_for(lambda: table(cluster, "localmodelnodegroup", group)[1][1:4] == ["20Gi", "2Gi", "18Gi"],
             "group columns: limit, used, available")
    header, row = table(cluster, "localmodelnode", node, "-o", "wide")
    assert header[:4] == ["NAME", "MODELS", "DOWNLOADED", "FREE"]
    assert row[:4] == [node, cache, "1", str(98 * GI)]
