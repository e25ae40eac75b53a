"""API types: KServe's enums, the ModelStatus → NodeStatus mapping, quantities, round trips."""

import pytest

from localmodel.api.quantity import approx_quantity, format_bytes, human_bytes, parse_quantity
from localmodel.api.types import (
    LocalModelCache,
    LocalModelNode,
    ModelStatus,
    NodeStatus,
    node_status_for,
)


def test_enum_values_are_kserves() -> None:
    assert [s.value for s in NodeStatus] == [
        "", "NodeNotReady", "NodeDownloadPending", "NodeDownloading", "NodeDownloaded",
        "NodeDownloadError",
    ]
    assert [s.value for s in ModelStatus] == [
        "", "ModelDownloadPending", "ModelDownloading", "ModelDownloaded", "ModelDownloadError",
    ]


@pytest.mark.parametrize(
    ("model", "node"),
    [
        ("ModelDownloadPending", NodeStatus.DOWNLOAD_PENDING),
        ("ModelDownloading", NodeStatus.DOWNLOADING),
        ("ModelDownloaded", NodeStatus.DOWNLOADED),
        ("ModelDownloadError", NodeStatus.DOWNLOAD_ERROR),
        ("", NodeStatus.DOWNLOAD_PENDING),
        (None, NodeStatus.DOWNLOAD_PENDING),
        ("SomethingElse", NodeStatus.DOWNLOAD_PENDING),
    ],
)
def test_model_to_node_status(model: str | None, node: NodeStatus) -> None:
    assert node_status_for(model) is node


@pytest.mark.parametrize(
    ("text", "value"),
    [("10Gi", 10 * 2**30), ("1.5Gi", 3 * 2**29), ("100M", 10**8), ("1e3", 1000), ("12", 12),
     ("500m", 1), (".5", 1), ("+2Ki", 2048), ("1E", 10**18), (7, 7)],
)
def test_parse_quantity(text: str | int, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("bad", ["", "Gi", "1.2.3", "10GB", "ten", "1Zi"])
def test_parse_quantity_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(bad)


def test_format_bytes() -> None:
    assert format_bytes(10 * 2**30) == "10Gi"
    assert format_bytes(1536) == "1536"
    assert format_bytes(3 * 2**20) == "3Mi"
    assert format_bytes(1000) == "1000"
    assert format_bytes(0) == "0"


def test_sizes_for_people() -> None:
    """The three formats side by side: exact quantity, message size, log size."""
    assert (format_bytes(1536 * 2**20), approx_quantity(1536 * 2**20), human_bytes(1536 * 2**20)) == \
        ("1536Mi", "1.50Gi", "1.5 GiB")
    assert (approx_quantity(10 * 2**30), approx_quantity(512), human_bytes(512)) == ("10Gi", "512 bytes", "512 B")


def test_cache_round_trip_keeps_kserve_field_names() -> None:
    body = {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "LocalModelCache",
        "metadata": {"name": "llama3-8b"},
        "spec": {
            "sourceModelUri": "hf://meta-llama/Meta-Llama-3-8B",
            "modelSize": "10Gi",
            "nodeGroups": ["workers"],
            "serviceAccountName": "hf-downloader",
            "storage": {"key": "hf-credentials", "parameters": {"type": "hf"}},
        },
        "status": {
            "nodeStatus": {"n1": "NodeDownloaded"},
            "copies": {"available": 1, "total": 1, "failed": 0},
            "inferenceServices": [{"namespace": "a", "name": "b"}],
        },
    }
    assert LocalModelCache.model_validate(body).to_k8s() == body


def test_node_round_trip_ignores_unknown_fields() -> None:
    body = {
        "metadata": {"name": "n1"},
        "spec": {"localModels": [{"sourceModelUri": "s3://a", "modelName": "m", "namespace": ""}]},
        "status": {"modelStatus": {"m": "ModelDownloaded"}, "somethingNew": 1},
    }
    node = LocalModelNode.model_validate(body)
    assert node.spec.local_models[0].source_model_uri == "s3://a"
    assert node.to_k8s()["status"] == {"modelStatus": {"m": "ModelDownloaded"}}


def test_quantity_or_none_reads_a_field_as_found() -> None:
    from localmodel.api.quantity import quantity_or_none

    assert quantity_or_none("1Gi") == 2**30
    assert quantity_or_none(None) is None
    assert quantity_or_none("lots") is None
    assert quantity_or_none({"not": "a quantity"}) is None
