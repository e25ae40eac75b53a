"""The status report joins caches with LocalModelNode progress (pure, no cluster)."""

from rich.console import Console

from localmodel.report.status import build_report, describe_node, render_table

CACHE = {
    "metadata": {"name": "llama"},
    "spec": {"sourceModelUri": "s3://b/llama", "modelSize": "10Gi", "nodeGroups": ["g"]},
    "status": {
        "copies": {"available": 1, "total": 3, "failed": 1},
        "nodeStatus": {"n1": "NodeDownloaded", "n2": "NodeDownloading", "n3": "NodeDownloadError"},
    },
}
NS_CACHE = {
    "metadata": {"name": "llama", "namespace": "team"},
    "spec": {"sourceModelUri": "s3://b/llama2", "modelSize": "1Gi", "nodeGroups": ["g"]},
}
NODES = [
    {"metadata": {"name": "n2"}, "status": {"modelDetails": {"llama": {
        "bytesDone": 250, "bytesTotal": 1000, "bytesPerSecond": 50}}}},
    {"metadata": {"name": "n3"}, "status": {"modelDetails": {"llama": {
        "reason": "InsufficientSpace", "message": "needs 10 GiB, 2 GiB free"}}}},
    {"metadata": {"name": "n1"}, "status": {"modelDetails": {"team/llama": {"bytesDone": 5}}}},
]


def test_report_joins_progress_by_status_key() -> None:
    rows = build_report([NS_CACHE, CACHE], NODES)
    assert [(r.namespace, r.name) for r in rows] == [("", "llama"), ("team", "llama")]
    cluster = rows[0]
    assert (cluster.available, cluster.total, cluster.failed) == (1, 3, 1)
    n2 = next(n for n in cluster.nodes if n.node == "n2")
    assert n2.percent == 25.0
    assert n2.eta_seconds == 15.0
    assert describe_node(n2) == "Downloading 25% 50 B/s ETA 15s"
    n3 = next(n for n in cluster.nodes if n.node == "n3")
    assert describe_node(n3) == "DownloadError InsufficientSpace: needs 10 GiB, 2 GiB free"
    # the namespaced cache has no status yet and must not pick up the cluster cache's details
    assert rows[1].nodes == () and rows[1].total == 0


def test_to_dict_and_table_render() -> None:
    rows = build_report([CACHE], NODES)
    as_dict = rows[0].to_dict()
    assert as_dict["nodes"][1]["percent"] == 25.0
    console = Console(record=True, width=200)
    console.print(render_table(rows))
    text = console.export_text()
    assert "s3://b/llama" in text and "1/3 (1 failed)" in text and "ETA 15s" in text
