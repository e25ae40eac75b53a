"""KServe's own controller scenarios (spec §7), run against the real apiserver.

Each test makes its own groups (a unique node label value), nodes and caches, so tests share one
running controller without seeing each other's objects.
"""

from __future__ import annotations

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Node, PersistentVolume, PersistentVolumeClaim

from localmodel.api.keys import storage_key
from localmodel.kube import resources

from .conftest import JOB_NAMESPACE, write_config
from .harness import (
    RunningController,
    absent,
    cache_status,
    create_cache,
    create_group,
    create_namespace,
    create_node,
    deleted,
    get_cache,
    lmn_entries,
    lmn_models,
    node_labels,
    report_model,
    set_ready,
    unique,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("webhooks_active")


def nodes_in_group(client: Client, group: str, count: int, ready: bool = True) -> list[str]:
    names = [unique(f"{group}-n{i}") for i in range(count)]
    for name in names:
        create_node(client, name, {"pool": group}, ready)
    return names


def test_pv_pvc_local_model_nodes_and_status_copied_from_agents(kube_client: Client,
                                                                 controller: RunningController) -> None:
    group = unique("gpu")
    create_group(kube_client, group)
    n1, n2 = nodes_in_group(kube_client, group, 2)
    cache = unique("llama")
    uri = f"hf://meta/{cache}"
    create_cache(kube_client, cache, uri, [group])

    for node in (n1, n2):
        wait_for(lambda node=node: lmn_entries(kube_client, node) == [
            {"sourceModelUri": uri, "modelName": cache, "namespace": "", "nodeGroup": group}], f"entry on {node}")
    # entries (node queue) and finalizer/volumes (cache queue) are written by different workers
    obj = wait_for(lambda: get_cache(kube_client, cache) if get_cache(kube_client, cache)["metadata"].get(
        "finalizers") else None, "finalizer")
    assert obj["metadata"]["finalizers"] == ["localmodel.kserve.io/finalizer"]
    pv = wait_for(lambda: kube_client.get(PersistentVolume, f"{cache}-{group}-download"), "download PV")
    pvc = wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{group}", namespace=JOB_NAMESPACE),
                   "download PVC")
    for owned in (pv, pvc):
        ref = owned.metadata.ownerReferences[0]
        assert (ref.kind, ref.name, ref.uid, ref.controller) == ("LocalModelCache", cache,
                                                                  obj["metadata"]["uid"], True)
    assert pvc.spec.volumeName == f"{cache}-{group}-download"
    assert pv.spec.hostPath.path == "/models"

    wait_for(lambda: cache_status(kube_client, cache).get("copies") == {"available": 0, "total": 2, "failed": 0},
             "pending copies")
    for node in (n1, n2):
        report_model(kube_client, node, {cache: "ModelDownloaded"})
    wait_for(lambda: cache_status(kube_client, cache).get("copies") == {"available": 2, "total": 2, "failed": 0},
             "copies 2/2/0")
    assert cache_status(kube_client, cache)["nodeStatus"] == {n1: "NodeDownloaded", n2: "NodeDownloaded"}
    label = f"model.localmodel.kserve.io/{storage_key(uri)}"
    for node in (n1, n2):
        wait_for(lambda node=node: node_labels(kube_client, node).get(label) == "true", f"model label on {node}")


def test_serving_volumes_per_consumer_namespace_and_annotated_group(kube_client: Client) -> None:
    g1, g2 = unique("g1"), unique("g2")
    create_group(kube_client, g1)
    create_group(kube_client, g2)
    nodes_in_group(kube_client, g1, 1)
    cache = unique("model")
    uri = f"gs://bucket/{cache}"
    create_cache(kube_client, cache, uri, [g1, g2])
    ns1, ns2 = create_namespace(kube_client, unique("ns")), create_namespace(kube_client, unique("ns"))
    isvc = lambda ns, name, **ann: resources.InferenceService({  # noqa: E731
        "metadata": {"name": name, "namespace": ns, "annotations": ann},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri + "/v1"}}}})
    created = kube_client.create(isvc(ns1, "plain"))
    # our defaulting webhook tied it to the cache (I3)
    assert created["metadata"]["labels"]["internal.serving.kserve.io/localmodel"] == cache
    assert created["metadata"]["annotations"]["internal.serving.kserve.io/localmodel-pvc-name"] == f"{cache}-{g1}"
    kube_client.create(isvc(ns2, "on-g2", **{"serving.kserve.io/nodegroup": g2}))

    wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{g1}", namespace=ns1), "serving PVC ns1")
    wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{g2}", namespace=ns2), "serving PVC ns2")
    pv = kube_client.get(PersistentVolume, f"{cache}-{g1}-{ns1}")
    assert pv.metadata.ownerReferences[0].name == cache
    assert kube_client.get(PersistentVolumeClaim, f"{cache}-{g1}", namespace=ns1).spec.volumeName == \
        f"{cache}-{g1}-{ns1}"
    wait_for(lambda: cache_status(kube_client, cache).get("inferenceServices") == sorted(
        [{"name": "plain", "namespace": ns1}, {"name": "on-g2", "namespace": ns2}],
        key=lambda r: (r["namespace"], r["name"])), "consumers in status")

    kube_client.delete(resources.InferenceService, "plain", namespace=ns1)
    wait_for(lambda: deleted(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{g1}", namespace=ns1)),
             "serving PVC of the namespace without consumers deleted")
    wait_for(lambda: cache_status(kube_client, cache).get("inferenceServices") == [
        {"name": "on-g2", "namespace": ns2}], "status lists the remaining consumer")


def test_llm_inference_service_tracked(kube_client: Client) -> None:
    group = unique("llm")
    create_group(kube_client, group)
    cache = unique("llm")
    uri = f"hf://org/{cache}"
    create_cache(kube_client, cache, uri, [group])
    ns = create_namespace(kube_client, unique("ns"))
    created = kube_client.create(resources.LLMInferenceService({
        "metadata": {"name": "chat", "namespace": ns}, "spec": {"model": {"uri": uri}}}))
    assert created["metadata"]["labels"]["internal.serving.kserve.io/localmodel"] == cache
    wait_for(lambda: cache_status(kube_client, cache).get("llmInferenceServices") == [
        {"name": "chat", "namespace": ns}], "LLMInferenceService in status")
    wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{group}", namespace=ns), "serving PVC")


def test_disable_volume_management_skips_serving_volumes(kube_client: Client) -> None:
    write_config(kube_client, disableVolumeManagement=True)
    try:
        group = unique("dvm")
        create_group(kube_client, group)
        cache = unique("dvm")
        uri = f"s3://b/{cache}"
        create_cache(kube_client, cache, uri, [group])
        ns = create_namespace(kube_client, unique("ns"))
        kube_client.create(resources.InferenceService({
            "metadata": {"name": "x", "namespace": ns},
            "spec": {"predictor": {"model": {"storageUri": uri}}}}))
        # download volumes still made (C8), consumers still tracked for delete protection
        wait_for(lambda: kube_client.get(PersistentVolume, f"{cache}-{group}-download"), "download PV")
        wait_for(lambda: cache_status(kube_client, cache).get("inferenceServices"), "consumer in status")
        assert absent(lambda: kube_client.get(PersistentVolumeClaim, f"{cache}-{group}", namespace=ns))
        assert absent(lambda: kube_client.get(PersistentVolume, f"{cache}-{group}-{ns}"))
    finally:
        write_config(kube_client)


def test_two_models_on_two_nodes_then_deletions(kube_client: Client) -> None:
    group = unique("two")
    create_group(kube_client, group)
    n1, n2 = nodes_in_group(kube_client, group, 2)
    a, b = unique("a"), unique("b")
    create_cache(kube_client, a, f"s3://b/{a}", [group])
    create_cache(kube_client, b, f"s3://b/{b}", [group])
    for node in (n1, n2):
        wait_for(lambda node=node: lmn_models(kube_client, node) == {a, b}, f"both models on {node}")
    kube_client.delete(resources.LocalModelCache, a)
    for node in (n1, n2):
        wait_for(lambda node=node: lmn_models(kube_client, node) == {b}, f"{a} removed from {node}")
    wait_for(lambda: absent(lambda: get_cache(kube_client, a)), f"{a} deleted")
    kube_client.delete(resources.LocalModelCache, b)
    for node in (n1, n2):
        wait_for(lambda node=node: lmn_models(kube_client, node) == set() and
                 kube_client.get(resources.LocalModelNode, node), f"{node} emptied, LocalModelNode kept")
    wait_for(lambda: absent(lambda: get_cache(kube_client, b)), f"{b} deleted")


def test_namespaced_cache_volumes_consumers_and_finalizer_cleanup(kube_client: Client) -> None:
    group = unique("nsg")
    create_group(kube_client, group)
    (node,) = nodes_in_group(kube_client, group, 1)
    team, other = create_namespace(kube_client, unique("team")), create_namespace(kube_client, unique("other"))
    name = unique("m")
    uri = f"s3://b/{name}"
    create_cache(kube_client, name, uri, [group], namespace=team)
    create_cache(kube_client, name, uri + "-cluster", [group])  # a cluster cache with the same name
    wait_for(lambda: lmn_models(kube_client, node) == {name, f"{team}/{name}"}, "mixed cluster+namespaced entries")
    ns_cache = get_cache(kube_client, name, team)
    assert ns_cache["metadata"]["finalizers"] == ["localmodelnamespacecache.kserve.io/finalizer"]
    download = f"{name}-{group}-{team}-download"
    pv = wait_for(lambda: kube_client.get(PersistentVolume, download), "download PV")
    pvc = wait_for(lambda: kube_client.get(PersistentVolumeClaim, download, namespace=JOB_NAMESPACE), "download PVC")
    assert not pv.metadata.ownerReferences and not pvc.metadata.ownerReferences

    spec = lambda ns: {"metadata": {"name": "svc", "namespace": ns},  # noqa: E731
                       "spec": {"predictor": {"model": {"storageUri": uri}}}}
    mine = kube_client.create(resources.InferenceService(spec(team)))
    assert mine["metadata"]["labels"]["internal.serving.kserve.io/localmodel-namespace"] == team
    theirs = kube_client.create(resources.InferenceService(spec(other)))
    assert "internal.serving.kserve.io/localmodel" not in (theirs["metadata"].get("labels") or {})
    wait_for(lambda: cache_status(kube_client, name, team).get("inferenceServices") == [
        {"name": "svc", "namespace": team}], "same-namespace consumer only")
    serving_pvc = wait_for(lambda: kube_client.get(PersistentVolumeClaim, f"{name}-{group}", namespace=team),
                           "serving PVC")
    assert serving_pvc.metadata.ownerReferences[0].kind == "LocalModelNamespaceCache"
    assert not kube_client.get(PersistentVolume, f"{name}-{group}-{team}").metadata.ownerReferences

    kube_client.delete(resources.InferenceService, "svc", namespace=team)
    wait_for(lambda: not cache_status(kube_client, name, team).get("inferenceServices"), "consumer gone")
    kube_client.delete(resources.LocalModelNamespaceCache, name, namespace=team)
    wait_for(lambda: absent(lambda: get_cache(kube_client, name, team)), "namespaced cache deleted")
    assert lmn_models(kube_client, node) == {name}
    for check in (lambda: kube_client.get(PersistentVolume, download),
                  lambda: kube_client.get(PersistentVolumeClaim, download, namespace=JOB_NAMESPACE),
                  lambda: kube_client.get(PersistentVolume, f"{name}-{group}-{team}")):
        wait_for(lambda check=check: deleted(check), "namespaced cache volumes deleted")


def test_node_created_later_and_not_ready_to_ready(kube_client: Client) -> None:
    group = unique("late")
    create_group(kube_client, group)
    cache = unique("late")
    create_cache(kube_client, cache, f"s3://b/{cache}", [group])
    wait_for(lambda: cache_status(kube_client, cache).get("copies") == {"available": 0, "total": 0, "failed": 0},
             "empty status")
    (late,) = nodes_in_group(kube_client, group, 1)
    wait_for(lambda: lmn_models(kube_client, late) == {cache}, "new node gets the model")
    (sleepy,) = nodes_in_group(kube_client, group, 1, ready=False)
    wait_for(lambda: cache_status(kube_client, cache).get("nodeStatus", {}).get(sleepy) == "NodeNotReady",
             "NotReady node reported")
    assert lmn_models(kube_client, sleepy) == set()  # no entry on a NotReady node
    set_ready(kube_client, sleepy, True)
    wait_for(lambda: lmn_models(kube_client, sleepy) == {cache}, "NotReady→Ready node gets the model")
    wait_for(lambda: cache_status(kube_client, cache)["nodeStatus"] == {
        late: "NodeDownloadPending", sleepy: "NodeDownloadPending"}, "both pending")
    assert kube_client.get(Node, late)
