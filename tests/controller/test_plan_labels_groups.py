"""Cache-aware node labels and LocalModelNodeGroup status from the agents' reports."""

from localmodel.api.keys import storage_key
from localmodel.controller.plan_groups import group_status
from localmodel.controller.plan_labels import desired_model_labels, label_patch

from .factories import group

GI = 2**30


def lmn(entries, statuses, **status):  # type: ignore[no-untyped-def]
    return {"spec": {"localModels": entries}, "status": {"modelStatus": statuses, **status}}


def entry(name, uri, namespace=""):  # type: ignore[no-untyped-def]
    return {"modelName": name, "sourceModelUri": uri, "namespace": namespace}


def test_label_only_for_downloaded_models_listed_in_spec() -> None:
    node = lmn([entry("a", "s3://b/a"), entry("b", "s3://b/b"), entry("c", "s3://b/c", "team")],
               {"a": "ModelDownloaded", "b": "ModelDownloading", "team/c": "ModelDownloaded",
                "removed": "ModelDownloaded"})
    assert desired_model_labels(node) == {
        f"model.localmodel.kserve.io/{storage_key('s3://b/a')}",
        f"model.localmodel.kserve.io/{storage_key('s3://b/c')}",
    }
    assert desired_model_labels(None) == set()


def test_label_key_fits_kubernetes_limits() -> None:
    key = next(iter(desired_model_labels(lmn([entry("a", "hf://x/" + "y" * 500)], {"a": "ModelDownloaded"}))))
    prefix, name = key.split("/")
    assert len(name) <= 63 and len(prefix) <= 253


def test_label_patch_adds_and_removes_only_ours() -> None:
    current = {"kubernetes.io/hostname": "n1", "model.localmodel.kserve.io/aaaa": "true",
               "model.localmodel.kserve.io/bbbb": "true"}
    desired = {"model.localmodel.kserve.io/bbbb", "model.localmodel.kserve.io/cccc"}
    assert label_patch(current, desired) == {"model.localmodel.kserve.io/cccc": "true",
                                             "model.localmodel.kserve.io/aaaa": None}
    assert label_patch({"model.localmodel.kserve.io/cccc": "true"}, {"model.localmodel.kserve.io/cccc"}) == {}


def test_group_status_reports_fullest_node() -> None:
    g = group("gpu", limit="100Gi")
    nodes = [
        lmn([], {}, disk={"capacityBytes": 500 * GI, "usedBytes": 30 * GI, "freeBytes": 400 * GI}),
        lmn([], {}, disk={"capacityBytes": 500 * GI, "usedBytes": 10 * GI, "freeBytes": 50 * GI}),
        None,  # a member without agent report yet
    ]
    # used: the largest usage; available: min(100-30, 400, 100-10, 50) = 50Gi
    assert group_status(g, nodes) == {"used": "30Gi", "available": "50Gi"}


def test_group_status_from_model_sizes_when_no_disk_report() -> None:
    g = group("gpu", limit="10Gi")
    node = lmn([], {"a": "ModelDownloaded", "b": "ModelDownloading"},
               modelDetails={"a": {"bytesTotal": 3 * GI}, "b": {"bytesTotal": 4 * GI}})
    assert group_status(g, [node]) == {"used": "3Gi", "available": "7Gi"}


def test_group_status_never_negative_and_empty_without_reports() -> None:
    g = group("gpu", limit="1Gi")
    assert group_status(g, [lmn([], {}, disk={"usedBytes": 2 * GI})]) == {"used": "2Gi", "available": "0"}
    assert group_status(g, [None, lmn([], {})]) == {}
