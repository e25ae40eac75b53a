"""Controller fixtures: CRDs installed, the controller running in-process, webhooks registered."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from tests.reference import REPO, kserve_reference
from localmodel.controller.manager import Settings
from localmodel.dev.controlplane import ControlPlane

from .harness import RunningController, create_namespace

POD_NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"

ValidatingWebhookConfiguration = create_global_resource(
    "admissionregistration.k8s.io", "v1", "ValidatingWebhookConfiguration", "validatingwebhookconfigurations")
MutatingWebhookConfiguration = create_global_resource(
    "admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations")


def install_crds(kube: ControlPlane, files: list[Path]) -> None:
    for path in files:
        kube.kubectl("apply", "--server-side", "-f", str(path))
    from .harness import wait_for

    # `kubectl wait` fails outright on a CRD whose status is not written yet: poll it
    wait_for(lambda: kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all",
                                  check=False).returncode == 0, "CRDs established")


def local_model_config(**overrides: Any) -> dict[str, str]:
    config = {"enabled": True, "jobNamespace": JOB_NAMESPACE, "disableVolumeManagement": False, **overrides}
    return {"localModel": json.dumps(config)}


def write_config(client: Client, **overrides: Any) -> None:
    body = ConfigMap(metadata=ObjectMeta(name="inferenceservice-config", namespace=POD_NAMESPACE),
                     data=local_model_config(**overrides))
    try:
        client.create(body)
    except ApiError as error:
        if error.status.code != 409:
            raise
        client.replace(body)


def register_webhooks(client: Client, kube: ControlPlane, port: int, suffix: str = "") -> None:
    ca = base64.b64encode(kube.server_ca.cert_pem).decode()

    def hook(name: str, path: str, rules: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"name": name, "clientConfig": {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca},
                "rules": rules, "failurePolicy": "Fail", "sideEffects": "None",
                "admissionReviewVersions": ["v1", "v1beta1"], "timeoutSeconds": 10, **extra}

    def rule(resource: str, version: str, operations: list[str], group: str = "serving.kserve.io") -> dict[str, Any]:
        return {"apiGroups": [group], "apiVersions": [version], "operations": operations, "resources": [resource]}

    cud = ["CREATE", "UPDATE", "DELETE"]
    validating = {"metadata": {"name": f"localmodel-validating{suffix}"}, "webhooks": [
        hook("localmodelcache.localmodel.kserve.io", "/validate-serving-kserve-io-v1alpha1-localmodelcache",
             [rule("localmodelcaches", "v1alpha1", cud)]),
        hook("localmodelnamespacecache.localmodel.kserve.io",
             "/validate-serving-kserve-io-v1alpha1-localmodelnamespacecache",
             [rule("localmodelnamespacecaches", "v1alpha1", cud)]),
    ]}
    mutating = {"metadata": {"name": f"localmodel-mutating{suffix}"}, "webhooks": [
        hook("inferenceservice.localmodel.kserve.io", "/mutate-serving-kserve-io-v1beta1-inferenceservice",
             [rule("inferenceservices", "v1beta1", ["CREATE", "UPDATE"])]),
        hook("llminferenceservice.localmodel.kserve.io", "/mutate-serving-kserve-io-v1alpha1-llminferenceservice",
             [rule("llminferenceservices", "*", ["CREATE", "UPDATE"])]),
        hook("pods.localmodel.kserve.io", "/mutate-pods", [rule("pods", "v1", ["CREATE"], group="")],
             objectSelector={"matchExpressions": [{"key": "localmodel.kserve.io/cache", "operator": "Exists"}]},
             reinvocationPolicy="Never"),
    ]}
    for res, body in ((ValidatingWebhookConfiguration, validating), (MutatingWebhookConfiguration, mutating)):
        try:
            client.create(res(body))
        except ApiError as error:
            if error.status.code != 409:
                raise
            existing = client.get(res, body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            client.replace(res(body))


def unregister_webhooks(client: Client, suffix: str = "") -> None:
    """Delete the configurations, then wait until the apiserver stops calling them (it drops
    them asynchronously): a dry-run create that a stopped webhook server would fail succeeds."""
    from lightkube.resources.core_v1 import Pod

    from localmodel.kube import resources

    from .harness import wait_for

    for res, name in ((ValidatingWebhookConfiguration, f"localmodel-validating{suffix}"),
                      (MutatingWebhookConfiguration, f"localmodel-mutating{suffix}")):
        try:
            client.delete(res, name)
        except ApiError as error:
            if error.status.code != 404:
                raise
    probes = [
        resources.LocalModelCache({"metadata": {"name": "webhook-gone-probe"}, "spec": {
            "sourceModelUri": "s3://probe/gone", "modelSize": "1", "nodeGroups": ["none"]}}),
        Pod.from_dict({"metadata": {"name": "webhook-gone-probe", "namespace": POD_NAMESPACE,
                                    "labels": {"localmodel.kserve.io/cache": "no-such-cache"}},
                       "spec": {"containers": [{"name": "c", "image": "x"}]}}),
    ]

    def accepted() -> bool:
        try:
            for probe in probes:
                client.create(probe, dry_run=True)
        except ApiError:
            return False
        return True

    wait_for(accepted, "webhooks no longer called")


@pytest.fixture(scope="session")
def cluster(kube: ControlPlane, kube_client: Client) -> ControlPlane:
    """Our CRDs plus KServe's InferenceService and LLMInferenceService CRDs, namespaces and config."""
    reference = kserve_reference() / "crds"
    install_crds(kube, sorted((REPO / "deploy" / "crds").glob("*.yaml")) + [
        reference / "serving.kserve.io_inferenceservices.yaml",
        reference / "serving.kserve.io_llminferenceservices.yaml",
    ])
    create_namespace(kube_client, POD_NAMESPACE)
    create_namespace(kube_client, JOB_NAMESPACE)
    write_config(kube_client)
    return kube


# The controller and its webhooks live only while tests/controller runs: a controller left
# running would garbage-collect other packages' LocalModelNodes (they have no Node objects),
# and webhooks left registered with failurePolicy Fail would refuse their caches.
@pytest.fixture(scope="package")
def controller(cluster: ControlPlane, kube_client: Client,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningController]:
    cert_dir = tmp_path_factory.mktemp("webhook-certs")
    pair = cluster.server_ca.issue_serving_cert("webhook", ["127.0.0.1"], cert_dir)
    pair.cert_file.rename(cert_dir / "tls.crt")
    pair.key_file.rename(cert_dir / "tls.key")
    settings = Settings(pod_namespace=POD_NAMESPACE, identity="controller-under-test", webhook_host="127.0.0.1",
                        webhook_port=0, webhook_cert_dir=cert_dir, health_port=None,
                        bind_address="127.0.0.1", metrics_port=0,
                        lease_duration=4, renew_deadline=3, retry_period=0.5,
                        # agent reports show in cache status within 0.5 s instead of 5 s; the spacing
                        # is unit-tested (test_workqueue) and runs at its default in tests/bench
                        cache_status_interval=0.5)
    running = RunningController(cluster.kubeconfig, settings).start()
    from .harness import wait_for

    wait_for(lambda: running.is_leader, "controller to lead")
    assert running.manager is not None and running.manager.webhook_port
    register_webhooks(kube_client, cluster, running.manager.webhook_port)
    yield running
    running.stop()
    unregister_webhooks(kube_client)


@pytest.fixture(scope="package")
def webhooks_active(controller: RunningController, kube_client: Client) -> RunningController:
    """Wait until the apiserver calls both webhook configurations (they activate asynchronously)."""
    from lightkube.resources.core_v1 import Pod

    from localmodel.kube import resources

    from .harness import wait_for

    assert controller.manager is not None
    hooks = controller.manager.webhooks
    probe_cache = resources.LocalModelCache({"metadata": {"name": "webhook-probe"}, "spec": {
        "sourceModelUri": "s3://probe/model", "modelSize": "1", "nodeGroups": ["none"]}})

    def called(create: Any) -> bool:
        before = hooks.calls
        try:
            create()
        except ApiError:
            pass
        return hooks.calls > before

    wait_for(lambda: called(lambda: kube_client.create(probe_cache, dry_run=True)), "validating webhook active")
    probe_pod = Pod.from_dict({"metadata": {"name": "webhook-probe", "namespace": POD_NAMESPACE,
                                            "labels": {"localmodel.kserve.io/cache": "no-such-cache"}},
                               "spec": {"containers": [{"name": "c", "image": "x"}]}})
    wait_for(lambda: called(lambda: kube_client.create(probe_pod, dry_run=True)), "mutating webhook active")
    return controller
