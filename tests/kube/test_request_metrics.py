"""Client-side API request classification matches kube-apiserver's verbs and resources."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from localmodel.kube.request_metrics import NON_RESOURCE, ApiRequestCounter, RequestKind, classify


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/v1/nodes", {}, RequestKind("LIST", "nodes", "")),
    ("GET", "/api/v1/nodes", {"watch": "true"}, RequestKind("WATCH", "nodes", "")),
    ("GET", "/api/v1/nodes/n1", {}, RequestKind("GET", "nodes", "")),
    ("PATCH", "/api/v1/nodes/n1/status", {}, RequestKind("PATCH", "nodes", "status")),
    ("GET", "/api/v1/namespaces", {}, RequestKind("LIST", "namespaces", "")),
    ("GET", "/api/v1/namespaces/kserve", {}, RequestKind("GET", "namespaces", "")),
    ("POST", "/api/v1/namespaces/jobs/persistentvolumeclaims", {}, RequestKind("POST", "persistentvolumeclaims", "")),
    ("GET", "/api/v1/namespaces/kserve/configmaps", {"watch": "1", "fieldSelector": "metadata.name=x"},
     RequestKind("WATCH", "configmaps", "")),
    ("POST", "/apis/serving.kserve.io/v1alpha1/localmodelnodes", {}, RequestKind("POST", "localmodelnodes", "")),
    ("PATCH", "/apis/serving.kserve.io/v1alpha1/localmodelcaches/c/status", {},
     RequestKind("PATCH", "localmodelcaches", "status")),
    ("PUT", "/apis/coordination.k8s.io/v1/namespaces/kserve/leases/lock", {}, RequestKind("PUT", "leases", "")),
    ("DELETE", "/apis/serving.kserve.io/v1alpha1/localmodelnodes/n1", {}, RequestKind("DELETE", "localmodelnodes", "")),
    ("DELETE", "/api/v1/namespaces/x/pods", {}, RequestKind("DELETECOLLECTION", "pods", "")),
    ("GET", "/version", {}, RequestKind("GET", NON_RESOURCE, "")),
    ("GET", "/apis/serving.kserve.io/v1alpha1", {}, RequestKind("GET", NON_RESOURCE, "")),
])
def test_classify_like_the_apiserver(method: str, path: str, query: dict[str, str], expected: RequestKind) -> None:
    assert classify(method, path, query) == expected


def test_counter_labels_by_code() -> None:
    registry = CollectorRegistry()
    counter = ApiRequestCounter(registry, prefix="t")
    counter.record("PATCH", "/api/v1/nodes/a", {}, 200)
    counter.record("PATCH", "/api/v1/nodes/b", {}, 200)
    counter.record("PATCH", "/api/v1/nodes/c", {}, 409)
    labels = {"verb": "PATCH", "resource": "nodes", "subresource": ""}
    assert registry.get_sample_value("t_kube_api_requests_total", {**labels, "code": "200"}) == 2
    assert registry.get_sample_value("t_kube_api_requests_total", {**labels, "code": "409"}) == 1
