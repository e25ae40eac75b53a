"""bench/coldstart.py on the session's real nodes with a tiny model: the product installed with
kubectl apply -k, a LocalModelCache at 2/2, and one Pod per scenario (cached, kserve-storage
init container, localmodel fetch init container, hostPath), so the benchmark cannot rot.
Asserts what the run produced (every scenario's row, checksums equal to the source's, the agent
metered under its real limits), never how fast it was."""

from __future__ import annotations

# Runs last of the real-node tests (file name order): the benchmark's clean-up leaves caches for
# the controller to finalise, which the product tests on the shared cluster must not inherit.

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from localmodel.dev.image import KSERVE_STORAGE_IMAGE, build_tool_image
from localmodel.dev.nodes import RealNodeCluster
from localmodel.dev.oci import WrittenImage

pytestmark = [pytest.mark.realnodes, pytest.mark.timeout(1200)]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "coldstart.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coldstart_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["coldstart_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_scenario_reads_the_whole_model_with_the_source_checksums(
        real_nodes: RealNodeCluster, product_image: WrittenImage, tmp_path: Path) -> None:
    bench = load_bench()
    args = bench.parse_args(["--models", "2x0.001", "--runs", "1", "--model-cache", str(tmp_path / "models"),
                             "--out", str(tmp_path / "results")])
    kserve = build_tool_image(tmp_path / "images", KSERVE_STORAGE_IMAGE)
    # Built the same way as the product image: its root filesystem layer is the product's blob.
    assert kserve.layers[0].digest == product_image.layers[0].digest
    images = (product_image.archive, product_image.reference, kserve.archive, kserve.reference,
              f"{KSERVE_STORAGE_IMAGE.venv_path}/bin/python")
    try:
        document = bench.run_benchmark(real_nodes, args, images, tmp_path / "work")
    finally:
        bench.remove_objects(real_nodes)

    [label] = document["models"]
    rows = document["rows"]
    assert sorted(row["scenario"] for row in rows) == ["a", "b", "c", "d"]
    for row in rows:
        assert row["problems"] == [], row
        # the reader hashed every file of the source, and nothing else, with equal sha256s
        assert row["files_ok"] and row["files"] == 8
        assert row["bytes"] == document["models"][label]["bytes"]
        assert row["seconds"] is not None and row["read_seconds"] is not None
    # The cache's first consumer Pod (the serving PVC made on demand) is recorded apart.
    assert [row["files_ok"] for row in document["first_pods"]] == [True]
    # Both agents were metered in their own Pod cgroups, under the DaemonSet's limits.
    usages = document["agents"][label]
    assert sorted(u["node"] for u in usages) == ["node-1", "node-2"]
    for usage in usages:
        assert usage["limit_memory"] == 300 * 2**20
        assert usage["cpu_limit"] == "2"
        assert usage["cpu_seconds"] > 0 and usage["peak_memory"] > 0
        assert usage["oom_kills"] == 0
    text = bench.summary(document)
    assert "(a) / (d)" in text and "Rows with problems: 0" in text
