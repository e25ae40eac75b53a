"""Webhooks called by the real apiserver: KServe's C12 messages, capacity, Pod mounting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import PersistentVolumeClaim, Pod

from localmodel.api.keys import storage_key
from localmodel.controller.metrics import ControllerMetrics
from localmodel.controller.webhook import Webhooks
from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources
from localmodel.kube.client import async_client

from .harness import cache_status, create_cache, create_group, create_namespace, create_node, unique, wait_for

pytestmark = pytest.mark.usefixtures("webhooks_active")


def refused(action) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as caught:
        action()
    return caught.value.status.message


def test_second_cache_with_the_same_uri_is_refused(kube_client: Client) -> None:
    group = unique("dup")
    create_group(kube_client, group)
    first = unique("first")
    uri = f"gs://bucket/{first}"
    create_cache(kube_client, first, uri, [group])
    message = refused(lambda: create_cache(kube_client, unique("second"), uri, [group]))
    assert f"LocalModelCache {first} has the same StorageURI {uri}" in message


def test_delete_refused_while_an_inference_service_uses_the_cache(kube_client: Client) -> None:
    group = unique("use")
    create_group(kube_client, group)
    cache = unique("used")
    uri = f"s3://b/{cache}"
    create_cache(kube_client, cache, uri, [group])
    ns = create_namespace(kube_client, unique("ns"))
    kube_client.create(resources.InferenceService({"metadata": {"name": "svc", "namespace": ns},
                                                   "spec": {"predictor": {"model": {"storageUri": uri}}}}))
    wait_for(lambda: cache_status(kube_client, cache).get("inferenceServices"), "consumer in status")
    message = refused(lambda: kube_client.delete(resources.LocalModelCache, cache))
    assert f"LocalModelCache {cache} is being used by InferenceService svc" in message
    kube_client.delete(resources.InferenceService, "svc", namespace=ns)
    kube_client.delete(resources.LocalModelCache, cache)


def test_namespaced_cache_needs_existing_groups_and_is_delete_protected(kube_client: Client) -> None:
    ns = create_namespace(kube_client, unique("team"))
    message = refused(lambda: create_cache(kube_client, "m", "s3://b/nogroup", ["missing-group"], namespace=ns))
    assert 'NodeGroup missing-group not found: localmodelnodegroups.serving.kserve.io "missing-group" not found' \
        in message
    group = unique("nsd")
    create_group(kube_client, group)
    uri = f"s3://b/{ns}"
    create_cache(kube_client, "m", uri, [group], namespace=ns)
    kube_client.create(resources.InferenceService({"metadata": {"name": "svc", "namespace": ns},
                                                   "spec": {"predictor": {"model": {"storageUri": uri}}}}))
    wait_for(lambda: cache_status(kube_client, "m", ns).get("inferenceServices"), "consumer in status")
    message = refused(lambda: kube_client.delete(resources.LocalModelNamespaceCache, "m", namespace=ns))
    assert f"LocalModelNamespaceCache {ns}/m is being used by InferenceService {ns}/svc" in message


def test_capacity_admission(kube_client: Client) -> None:
    group = unique("cap")
    create_group(kube_client, group, limit="10Gi")
    a = unique("a")
    create_cache(kube_client, a, f"s3://b/{a}", [group], size="6Gi")
    message = refused(lambda: create_cache(kube_client, unique("b"), f"s3://b/{a}-other", [group], size="5Gi"))
    assert f"does not fit in LocalModelNodeGroup {group}: storageLimit 10Gi, 6Gi already reserved by 1 cache(s) " \
           f"({a}), 4Gi left" in message
    create_cache(kube_client, unique("fits"), f"s3://b/{a}-small", [group], size="4Gi")


def test_pod_naming_a_cache_gets_the_model_mounted(kube_client: Client) -> None:
    group = unique("pod")
    create_group(kube_client, group)
    create_node(kube_client, unique("pn"), {"pool": group})
    cache = unique("shared")
    uri = f"hf://org/{cache}"
    create_cache(kube_client, cache, uri, [group])
    ns = create_namespace(kube_client, unique("apps"))
    pod = kube_client.create(Pod.from_dict({
        "metadata": {"name": "worker", "namespace": ns, "labels": {"localmodel.kserve.io/cache": cache},
                     "annotations": {"localmodel.kserve.io/node-affinity": "required"}},
        "spec": {"containers": [{"name": "main", "image": "vllm"}]}}))
    volume = next(v for v in pod.spec.volumes if v.name == "localmodel-cache")
    assert (volume.persistentVolumeClaim.claimName, volume.persistentVolumeClaim.readOnly) == (f"{cache}-{group}", True)
    mount = next(m for m in pod.spec.containers[0].volumeMounts if m.name == "localmodel-cache")
    assert (mount.mountPath, mount.subPath, mount.readOnly) == ("/mnt/models", f"models/{storage_key(uri)}", True)
    term = pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]
    assert term.matchExpressions[0].key == f"model.localmodel.kserve.io/{storage_key(uri)}"
    # the controller makes the serving claim in the pod's namespace
    claim = wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{group}", namespace=ns), "claim")
    assert claim.spec.volumeName == f"{cache}-{group}-{ns}"


def test_pod_naming_an_unknown_cache_is_refused(kube_client: Client) -> None:
    ns = create_namespace(kube_client, unique("apps"))
    message = refused(lambda: kube_client.create(Pod.from_dict({
        "metadata": {"name": "p", "namespace": ns, "labels": {"localmodel.kserve.io/cache": "nope"}},
        "spec": {"containers": [{"name": "main", "image": "x"}]}})))
    assert "no LocalModelNamespaceCache" in message and "no LocalModelCache nope" in message


# --- admission reads its own writes: decisions are confirmed live where the informers may lag ---


def test_caches_created_back_to_back_never_share_a_uri(kube_client: Client) -> None:
    """The duplicate rule used to read only the informer: a second cache created right after the
    first was admitted whenever the watch event had not arrived yet."""
    group = unique("race")
    create_group(kube_client, group)
    for round_ in range(25):
        first = unique(f"r{round_}a")
        uri = f"gs://bucket/{first}"
        create_cache(kube_client, first, uri, [group])
        message = refused(lambda: create_cache(kube_client, unique(f"r{round_}b"), uri, [group]))
        assert f"LocalModelCache {first} has the same StorageURI {uri}" in message


def test_capacity_counts_a_cache_admitted_a_moment_ago(kube_client: Client) -> None:
    for round_ in range(10):
        group = unique(f"capr{round_}")
        create_group(kube_client, group, limit="10Gi")
        a = unique("a")
        create_cache(kube_client, a, f"s3://b/{a}", [group], size="6Gi")
        message = refused(lambda: create_cache(kube_client, unique("b"), f"s3://b/{a}-2", [group], size="5Gi"))
        assert f"6Gi already reserved by 1 cache(s) ({a})" in message


def test_namespaced_cache_right_after_its_group_and_pod_right_after_its_cache(kube_client: Client) -> None:
    ns = create_namespace(kube_client, unique("fresh"))
    for round_ in range(10):
        group = unique(f"g{round_}")
        create_group(kube_client, group)
        name = f"m{round_}"
        create_cache(kube_client, name, f"s3://b/{ns}-{round_}", [group], namespace=ns)  # not refused
        pod = kube_client.create(Pod.from_dict({
            "metadata": {"name": f"p{round_}", "namespace": ns, "labels": {"localmodel.kserve.io/cache": name}},
            "spec": {"containers": [{"name": "main", "image": "x"}]}}))
        assert any(v.name == "localmodel-cache" for v in pod.spec.volumes)


def test_delete_refused_for_a_consumer_not_yet_in_status(kube_client: Client) -> None:
    """A labelled InferenceService counts at once, before the controller lists it in status."""
    group = unique("fresh-use")
    create_group(kube_client, group)
    ns = create_namespace(kube_client, unique("ns"))
    for round_ in range(5):
        cache = unique(f"u{round_}")
        create_cache(kube_client, cache, f"s3://b/{cache}", [group])
        # The defaulting webhook labels it (the cache was just created: a live read finds it).
        svc = kube_client.create(resources.InferenceService({
            "metadata": {"name": f"svc{round_}", "namespace": ns},
            "spec": {"predictor": {"model": {"storageUri": f"s3://b/{cache}"}}}}))
        assert svc["metadata"]["labels"]["internal.serving.kserve.io/localmodel"] == cache
        message = refused(lambda: kube_client.delete(resources.LocalModelCache, cache))
        assert f"LocalModelCache {cache} is being used by InferenceService svc{round_}" in message


class _NothingSeen:
    """An informer view that has not caught up with anything yet (the race, made certain)."""

    def cluster_caches(self) -> list[Any]:
        return []

    def namespace_caches(self, namespace: str) -> list[Any]:
        return []

    def all_caches(self) -> list[Any]:
        return []

    def all_groups(self) -> dict[str, Any]:
        return {}

    def cache(self, ref: Any) -> None:
        return None


def test_every_cache_dependent_decision_reads_its_own_writes(cluster: ControlPlane, kube_client: Client) -> None:
    """With informers that have seen nothing, each decision still matches the apiserver's truth."""
    group = unique("live")
    create_group(kube_client, group, limit="10Gi")
    first = unique("live-first")
    uri = f"gs://bucket/{first}"
    create_cache(kube_client, first, uri, [group], size="6Gi")
    ns = create_namespace(kube_client, unique("live-ns"))

    def cache_review(name: str, source: str, size: str, namespace: str = "") -> dict[str, Any]:
        meta = {"name": name, **({"namespace": namespace} if namespace else {})}
        return {"operation": "CREATE", "object": {"metadata": meta, "spec": {
            "sourceModelUri": source, "modelSize": size, "nodeGroups": [group]}}}

    async def decide() -> list[str | None]:
        client = async_client(str(cluster.kubeconfig))
        try:
            hooks = Webhooks(_NothingSeen(), client, ControllerMetrics(),  # type: ignore[arg-type]
                             claim_now=lambda ref: None)
            duplicate, _ = await hooks.validate_cluster_cache(cache_review(unique("dup"), uri, "1Gi"))
            overflow, _ = await hooks.validate_cluster_cache(cache_review(unique("big"), f"{uri}-2", "5Gi"))
            grouped, _ = await hooks.validate_namespace_cache(cache_review("m", f"{uri}-3", "1Gi", ns))
            pod = {"metadata": {"name": "p", "namespace": ns, "labels": {"localmodel.kserve.io/cache": first}},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}
            mounted, ops = await hooks.mutate_pod({"operation": "CREATE", "namespace": ns, "object": pod})
            assert ops, "the Pod gets the cache mounted"
            return [duplicate, overflow, grouped, mounted]
        finally:
            await client.close()

    duplicate, overflow, grouped, mounted = asyncio.run(decide())
    assert duplicate is not None and f"LocalModelCache {first} has the same StorageURI {uri}" in duplicate
    assert overflow is not None and "6Gi already reserved by 1 cache(s)" in overflow
    assert grouped is None, "the group exists, though the informers have not seen it"
    assert mounted is None


def test_consumers_of_a_kind_the_apiserver_does_not_serve_are_none(
        cluster: ControlPlane, kube_client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without KServe's CRDs the consumer lists answer a plain-text 404 (not an ApiError): that
    kind has no consumers, and a cache stays deletable (the real-node demo found this)."""
    from lightkube.generic_resource import create_namespaced_resource

    from localmodel.controller import admission_live

    unserved = create_namespaced_resource("absent.localmodel.example", "v1", "Nothing", "nothings")
    monkeypatch.setattr(admission_live, "_CONSUMER_KINDS", (("Nothing", unserved),))
    group = unique("unserved")
    create_group(kube_client, group)
    cache = unique("deletable")
    create_cache(kube_client, cache, f"s3://b/{cache}", [group])

    async def consumers() -> admission_live.Consumers:
        client = async_client(str(cluster.kubeconfig))
        try:
            live = admission_live.LiveReads(client)
            found = await live.cluster_caches()
            return await live.labelled_consumers(next(c for c in found if c.ref.name == cache))
        finally:
            await client.close()

    assert asyncio.run(consumers()) == []
