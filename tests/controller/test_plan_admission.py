"""Admission decisions: KServe's C12 messages, capacity, I1–I3 defaulting, Pod mutation."""

import pytest

from localmodel.api.keys import storage_key
from localmodel.controller.admission_cache import (
    capacity,
    capacity_relevant_change,
    duplicate_uri,
    in_use,
    missing_groups,
)
from localmodel.controller.admission_consumers import (
    choose_cache,
    defaulted,
    defaulting_patch,
    isvc_storage_uri,
    llmisvc_storage_uri,
)
from localmodel.controller.admission_pod import PodMutationError, mutated_pod, pod_patch

from .factories import cache, group

GROUPS = {"gpu": group("gpu", limit="10Gi"), "cpu": group("cpu", limit="100Gi")}


def test_duplicate_uri_message_is_kserves() -> None:
    new = cache("b", "gs://bucket/m")
    assert duplicate_uri(new, [cache("a", "gs://bucket/m")]) == "LocalModelCache a has the same StorageURI gs://bucket/m"
    assert duplicate_uri(new, [cache("b", "gs://bucket/m")]) is None  # itself (an update)
    assert duplicate_uri(new, [cache("a", "gs://bucket/m/")]) is None  # raw string compare, as KServe


def test_missing_group_message_is_kserves() -> None:
    c = cache("a", groups=["gpu", "nope"], namespace="team")
    assert missing_groups(c, GROUPS) == ('NodeGroup nope not found: localmodelnodegroups.serving.kserve.io "nope" '
                                         "not found")
    assert missing_groups(cache("a", groups=["gpu"]), GROUPS) is None


def isvc(ns, name, **labels):  # type: ignore[no-untyped-def]
    return {"metadata": {"namespace": ns, "name": name, "labels": labels}}


def test_in_use_messages() -> None:
    label = "internal.serving.kserve.io/localmodel"
    ns_label = "internal.serving.kserve.io/localmodel-namespace"
    c = cache("llama")
    assert in_use(c, [("InferenceService", isvc("ns", "x", **{label: "llama"}))]) == \
        "LocalModelCache llama is being used by InferenceService x"
    assert in_use(c, [("InferenceService", isvc("ns", "x", **{label: "other"}))]) is None
    nsc = cache("llama", namespace="team")
    used = isvc("team", "x", **{label: "llama", ns_label: "team"})
    assert in_use(nsc, [("InferenceService", used)]) == \
        "LocalModelNamespaceCache team/llama is being used by InferenceService team/x"
    assert in_use(nsc, [("InferenceService", isvc("team", "x", **{label: "llama"}))]) is None


@pytest.mark.parametrize(
    ("placed", "new_size", "refused"),
    [
        ([], "10Gi", False),
        ([], "11Gi", True),
        ([("a", "s3://a", "6Gi")], "4Gi", False),
        ([("a", "s3://a", "6Gi")], "5Gi", True),
        ([("a", "s3://new", "6Gi")], "8Gi", False),  # same model already placed: shares the folder
    ],
)
def test_capacity(placed, new_size, refused) -> None:  # type: ignore[no-untyped-def]
    others = [cache(n, uri, ["gpu"], size=size) for n, uri, size in placed]
    new = cache("new", "s3://new", ["gpu"], namespace="team", size=new_size)
    message = capacity(new, GROUPS, others)
    assert (message is not None) is refused
    if refused:
        assert message.startswith(f"LocalModelNamespaceCache team/new: modelSize {new_size} does not fit in "
                                  "LocalModelNodeGroup gpu: storageLimit 10Gi")


def test_capacity_only_rechecked_when_the_reservation_grows() -> None:
    old = cache("a", groups=["gpu"], size="1Gi")
    assert capacity_relevant_change(None, old)
    assert not capacity_relevant_change(old, cache("a", groups=["gpu"], size="1Gi"))
    assert capacity_relevant_change(old, cache("a", groups=["gpu"], size="2Gi"))
    assert capacity_relevant_change(old, cache("a", groups=["gpu", "cpu"], size="1Gi"))


def test_isvc_storage_uri_from_model_framework_or_container() -> None:
    assert isvc_storage_uri({"spec": {"predictor": {"model": {"storageUri": "s3://m"}}}}) == "s3://m"
    assert isvc_storage_uri({"spec": {"predictor": {"sklearn": {"storageUri": "s3://s"}}}}) == "s3://s"
    assert isvc_storage_uri({"spec": {"predictor": {"containers": [
        {"name": "kserve-container", "env": [{"name": "STORAGE_URI", "value": "s3://c"}]}]}}}) == "s3://c"
    assert isvc_storage_uri({"spec": {"predictor": {}}}) is None
    assert llmisvc_storage_uri({"spec": {"model": {"uri": "hf://o/m"}}}) == "hf://o/m"


def test_choose_cache_prefers_namespaced_and_honours_nodegroup() -> None:
    cluster = [cache("c1", "gs://b/m", ["gpu", "cpu"])]
    namespaced = [cache("n1", "gs://b/m", ["gpu"], namespace="team")]
    hit = choose_cache("gs://b/m/sub/x.pt", None, namespaced, cluster)
    assert hit is not None and hit[0].ref.name == "n1" and hit[1] == "n1-gpu"
    hit = choose_cache("gs://b/m", "cpu", namespaced, cluster)  # n1 lacks cpu: skipped
    assert hit is not None and hit[0].ref.name == "c1" and hit[1] == "c1-cpu"
    assert choose_cache("gs://b/m-evil", None, namespaced, cluster) is None
    assert choose_cache("gs://b/m", "tpu", namespaced, cluster) is None


def test_defaulting_sets_and_removes_kserve_metadata() -> None:
    cluster = [cache("llama", "hf://meta/llama", ["gpu"])]
    isvc_obj = {"metadata": {"name": "x", "namespace": "ns"}, "spec": {}}
    out = defaulted(isvc_obj, "hf://meta/llama", True, [], cluster)
    assert out["metadata"]["labels"] == {"internal.serving.kserve.io/localmodel": "llama"}
    assert out["metadata"]["annotations"] == {
        "internal.serving.kserve.io/localmodel-sourceuri": "hf://meta/llama",
        "internal.serving.kserve.io/localmodel-pvc-name": "llama-gpu",
    }
    # miss (disabled per object): all four removed
    out["metadata"]["annotations"]["serving.kserve.io/disable-localmodel"] = "true"
    out["metadata"]["labels"]["internal.serving.kserve.io/localmodel-namespace"] = "stale"
    again = defaulted(out, "hf://meta/llama", True, [], cluster)
    assert again["metadata"]["labels"] == {}
    assert again["metadata"]["annotations"] == {"serving.kserve.io/disable-localmodel": "true"}
    # switched off globally: nothing set
    assert defaulting_patch(isvc_obj, "hf://meta/llama", False, [], cluster) == []
    ops = defaulting_patch(isvc_obj, "hf://meta/llama", True, [], cluster)
    assert {"op": "add", "path": "/metadata/labels", "value": {"internal.serving.kserve.io/localmodel": "llama"}} in ops


def pod(**annotations):  # type: ignore[no-untyped-def]
    return {"metadata": {"name": "p", "namespace": "team", "labels": {"localmodel.kserve.io/cache": "llama"},
                         "annotations": annotations},
            "spec": {"containers": [{"name": "main", "image": "x"}, {"name": "side", "image": "y"}]}}


def test_pod_gets_read_only_model_mount_and_preferred_affinity() -> None:
    c = cache("llama", "hf://meta/llama", ["gpu", "cpu"])
    out = mutated_pod(pod(), c)
    assert out["spec"]["volumes"] == [{"name": "localmodel-cache",
                                       "persistentVolumeClaim": {"claimName": "llama-gpu", "readOnly": True}}]
    mount = {"name": "localmodel-cache", "mountPath": "/mnt/models",
             "subPath": f"models/{storage_key('hf://meta/llama')}", "readOnly": True}
    assert [c["volumeMounts"] for c in out["spec"]["containers"]] == [[mount], [mount]]
    pref = out["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref == [{"weight": 100, "preference": {"matchExpressions": [
        {"key": f"model.localmodel.kserve.io/{storage_key('hf://meta/llama')}", "operator": "In",
         "values": ["true"]}]}}]
    assert out["metadata"]["annotations"]["localmodel.kserve.io/mounted"] == "llama"
    assert mutated_pod(out, c) == out  # idempotent


def test_pod_required_affinity_group_containers_and_mount_path() -> None:
    c = cache("llama", "hf://meta/llama", ["gpu", "cpu"], namespace="team")
    p = pod(**{"localmodel.kserve.io/node-affinity": "required", "localmodel.kserve.io/containers": "main",
               "localmodel.kserve.io/mount-path": "/models", "serving.kserve.io/nodegroup": "cpu"})
    p["spec"]["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    out = mutated_pod(p, c)
    terms = out["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 1 and len(terms[0]["matchExpressions"]) == 2
    assert out["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "llama-cpu"
    assert out["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/models"
    assert "volumeMounts" not in out["spec"]["containers"][1]
    assert out["metadata"]["labels"]["localmodel.kserve.io/cache-namespace"] == "team"
    assert pod_patch(p, c)  # non-empty JSON patch


def test_pod_with_bad_annotations_is_refused() -> None:
    c = cache("llama", "hf://meta/llama", ["gpu"])
    with pytest.raises(PodMutationError, match="node-affinity"):
        mutated_pod(pod(**{"localmodel.kserve.io/node-affinity": "sometimes"}), c)
    with pytest.raises(PodMutationError, match="unknown containers: ghost"):
        mutated_pod(pod(**{"localmodel.kserve.io/containers": "ghost"}), c)
