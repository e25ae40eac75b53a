"""Download and serving PV/PVCs: KServe's names and owner references (C8, C10), cleanup."""

from localmodel.controller.plan_volumes import (
    PV,
    PVC,
    VolumeKey,
    consumer_groups,
    download_volumes,
    previous_consumer_namespaces,
    serving_volumes,
    volumes_to_delete,
)
from localmodel.controller.views import Consumer

from .factories import cache, group

GPU, CPU = group("gpu"), group("cpu")
GROUPS = {"gpu": GPU, "cpu": CPU}
C = cache("llama", groups=["gpu", "cpu"], uid="u1")
NSC = cache("llama", groups=["gpu"], namespace="team", uid="u2")


def keys(volumes):  # type: ignore[no-untyped-def]
    return [(v.key.kind, v.key.namespace, v.key.name) for v in volumes]


def test_cluster_cache_download_volumes_have_kserve_names_and_controller_owner() -> None:
    volumes = download_volumes(C, [GPU, CPU], "jobs")
    assert keys(volumes) == [
        (PV, "", "llama-gpu-download"), (PVC, "jobs", "llama-gpu"),
        (PV, "", "llama-cpu-download"), (PVC, "jobs", "llama-cpu"),
    ]
    pv, pvc = volumes[0].body, volumes[1].body
    owner = pv["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache", "name": "llama",
                     "uid": "u1", "controller": True, "blockOwnerDeletion": True}
    assert pvc["metadata"]["ownerReferences"] == [owner]
    assert pv["spec"] == dict(GPU.pv_spec)  # verbatim
    assert pvc["spec"]["volumeName"] == "llama-gpu-download"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_namespaced_cache_download_volumes_have_no_owner() -> None:
    volumes = download_volumes(NSC, [GPU], "jobs")
    assert keys(volumes) == [(PV, "", "llama-gpu-team-download"), (PVC, "jobs", "llama-gpu-team-download")]
    assert all("ownerReferences" not in v.body["metadata"] for v in volumes)


def test_consumer_groups_follow_the_nodegroup_annotation() -> None:
    consumers = [
        Consumer("InferenceService", "ns1", "plain", None),
        Consumer("InferenceService", "ns2", "on-cpu", "cpu"),
        Consumer("InferenceService", "ns2", "plain", None),
        Consumer("InferenceService", "ns3", "elsewhere", "not-a-group-of-the-cache"),
    ]
    assert consumer_groups(C, consumers) == {"ns1": ["gpu"], "ns2": ["gpu", "cpu"]}


def test_namespaced_cache_serves_only_its_namespace() -> None:
    consumers = [Consumer("InferenceService", "team", "a", None), Consumer("InferenceService", "other", "b", None)]
    assert consumer_groups(NSC, consumers) == {"team": ["gpu"]}


def test_serving_volumes_names_and_owners() -> None:
    volumes = serving_volumes(C, GROUPS, {"ns1": ["gpu"]})
    assert keys(volumes) == [(PV, "", "llama-gpu-ns1"), (PVC, "ns1", "llama-gpu")]
    assert volumes[0].body["metadata"]["ownerReferences"][0]["uid"] == "u1"
    ns_volumes = serving_volumes(NSC, GROUPS, {"team": ["gpu"]})
    assert "ownerReferences" not in ns_volumes[0].body["metadata"]  # PV: cannot be owned
    assert ns_volumes[1].body["metadata"]["ownerReferences"][0]["kind"] == "LocalModelNamespaceCache"


def test_serving_volume_skipped_while_group_object_missing() -> None:
    assert serving_volumes(C, {"cpu": CPU}, {"ns1": ["gpu"]}) == []


def test_stale_owned_objects_and_kserve_named_leftovers_are_deleted() -> None:
    desired = download_volumes(C, [GPU], "jobs") + serving_volumes(C, GROUPS, {"ns1": ["gpu"]})
    owned = [v.key for v in desired] + [VolumeKey(PV, "", "llama-cpu-download"), VolumeKey(PVC, "jobs", "llama-cpu")]
    doomed = volumes_to_delete(C, owned, desired, previous_namespaces={"ns1", "gone"}, job_namespace="jobs")
    assert [(k.kind, k.namespace, k.name) for k in doomed] == [
        (PVC, "gone", "llama-cpu"), (PVC, "gone", "llama-gpu"), (PVC, "jobs", "llama-cpu"),
        (PV, "", "llama-cpu-download"), (PV, "", "llama-cpu-gone"), (PV, "", "llama-gpu-gone"),
    ]


def test_deleting_namespaced_cache_deletes_everything_by_name() -> None:
    deleting = cache("llama", groups=["gpu"], namespace="team", deleting=True)
    doomed = volumes_to_delete(deleting, [], [], previous_namespaces={"team"}, job_namespace="jobs")
    assert {(k.kind, k.namespace, k.name) for k in doomed} == {
        (PVC, "team", "llama-gpu"), (PV, "", "llama-gpu-team"),
        (PVC, "jobs", "llama-gpu-team-download"), (PV, "", "llama-gpu-team-download"),
    }


def test_previous_namespaces_come_from_both_consumer_lists() -> None:
    status = {"inferenceServices": [{"namespace": "a", "name": "x"}],
              "llmInferenceServices": [{"namespace": "b", "name": "y"}]}
    assert previous_consumer_namespaces(status) == {"a", "b"}
