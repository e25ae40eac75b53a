"""Admission: ValidatingAdmissionPolicy is served and enforced, and the apiserver calls admission
webhooks on local HTTPS servers whose certificates come from the cluster's serving CA."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from localmodel.dev.controlplane import ControlPlane

ValidatingAdmissionPolicy = create_global_resource(
    "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies"
)
ValidatingAdmissionPolicyBinding = create_global_resource(
    "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding", "validatingadmissionpolicybindings"
)
ValidatingWebhookConfiguration = create_global_resource(
    "admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations"
)

# Policies and webhooks take effect when the apiserver's informers see them: poll, generously.
ACTIVATION_DEADLINE = 120.0


def _denied_eventually(attempt: Callable[[], Any]) -> ApiError:
    """Call `attempt` (a create) until the apiserver rejects it; return the rejection."""
    deadline = time.monotonic() + ACTIVATION_DEADLINE
    while True:
        try:
            attempt()
        except ApiError as error:
            if error.status.code in (400, 403, 422):
                return error
            raise
        if time.monotonic() > deadline:
            pytest.fail(f"admission never rejected the request within {ACTIVATION_DEADLINE}s")
        time.sleep(0.5)


def _config_map(namespace: str, name: str, data: dict[str, str]) -> ConfigMap:
    return ConfigMap(metadata=ObjectMeta(namespace=namespace, generateName=f"{name}-"), data=data)


def test_validating_admission_policy_api_is_served(kubectl: Callable[..., Any]) -> None:
    resources = kubectl("api-resources", "--api-group=admissionregistration.k8s.io", "-o", "name").stdout.split()
    assert "validatingadmissionpolicies.admissionregistration.k8s.io" in resources
    assert "validatingadmissionpolicybindings.admissionregistration.k8s.io" in resources


def test_validating_admission_policy_rejects_matching_objects(kube_client: Client, namespace: str) -> None:
    name = f"no-forbidden-key-{namespace}"
    kube_client.create(
        ValidatingAdmissionPolicy.from_dict(
            {
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}
                        ]
                    },
                    "validations": [
                        {"expression": "!has(object.data) || !('forbidden' in object.data)", "message": "key 'forbidden' is not allowed"}
                    ],
                },
            }
        )
    )
    kube_client.create(
        ValidatingAdmissionPolicyBinding.from_dict(
            {
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}},
                },
            }
        )
    )
    try:
        rejection = _denied_eventually(lambda: kube_client.create(_config_map(namespace, "bad", {"forbidden": "1"})))
        assert "key 'forbidden' is not allowed" in rejection.status.message
        kube_client.create(_config_map(namespace, "good", {"allowed": "1"}))
    finally:
        kube_client.delete(ValidatingAdmissionPolicyBinding, name)
        kube_client.delete(ValidatingAdmissionPolicy, name)


class _DenyingWebhook(BaseHTTPRequestHandler):
    """Denies ConfigMaps whose name starts with `deny-`, records every AdmissionReview."""

    reviews: list[dict[str, Any]]

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews.append(review)  # type: ignore[attr-defined]
        request = review["request"]
        metadata = request["object"]["metadata"]
        allowed = not (metadata.get("generateName") or metadata.get("name", "")).startswith("deny-")
        response: dict[str, Any] = {"uid": request["uid"], "allowed": allowed}
        if not allowed:
            response["status"] = {"code": 403, "message": "denied by the local test webhook"}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean


@pytest.fixture
def webhook_server(kube: ControlPlane, tmp_path: Path) -> Iterator[ThreadingHTTPServer]:
    pair = kube.server_ca.issue_serving_cert("webhook", ["127.0.0.1"], tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyingWebhook)
    server.reviews = []  # type: ignore[attr-defined]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_file, pair.key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_apiserver_calls_a_local_https_webhook(
    kube: ControlPlane, kube_client: Client, namespace: str, webhook_server: ThreadingHTTPServer
) -> None:
    name = f"deny-prefix-{namespace}"
    port = webhook_server.server_address[1]
    kube_client.create(
        ValidatingWebhookConfiguration.from_dict(
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "deny-prefix.localmodel.test",
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{port}/validate",
                            "caBundle": base64.b64encode(kube.server_ca.cert_pem).decode(),
                        },
                        "rules": [
                            {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}
                        ],
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 10,
                    }
                ],
            }
        )
    )
    try:
        rejection = _denied_eventually(lambda: kube_client.create(_config_map(namespace, "deny", {})))
        assert "denied by the local test webhook" in rejection.status.message
        kube_client.create(_config_map(namespace, "allow", {}))
        reviews = webhook_server.reviews  # type: ignore[attr-defined]
        assert {r["request"]["namespace"] for r in reviews} == {namespace}
        assert any(r["request"]["object"]["metadata"]["generateName"] == "allow-" for r in reviews)
    finally:
        kube_client.delete(ValidatingWebhookConfiguration, name)
