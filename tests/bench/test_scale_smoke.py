"""bench/scale.py end to end at a small scale (20 nodes × 3 caches): it converges and gathers
its counts. No timing is asserted; the numbers belong in BENCHMARKS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from localmodel.dev.build import Paths

REPO = Path(__file__).resolve().parents[2]
NODES, CACHES, GROUPS = 20, 3, 3


@pytest.fixture(scope="module")
def result(controlplane_paths: Paths, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # the bench starts a control plane of its own; controlplane_paths builds it before any timeout
    out = tmp_path_factory.mktemp("scale") / "result.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "scale.py"), "--nodes", str(NODES), "--caches", str(CACHES),
         "--groups", str(GROUPS), "--settle", "1", "--timeout", "120", "--json", str(out)],
        capture_output=True, text=True, timeout=480,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout)  # the bench's summary, shown with any failure below
    return dict(json.loads(out.read_text()))


def test_every_node_got_its_entries(result: dict[str, Any]) -> None:
    nodes = result["phases"]["nodes"]
    assert nodes["converged_seconds"] > 0
    # one LocalModelNode per node, created by the controller (seen client- and server-side)
    assert nodes["controller_requests"]["POST localmodelnodes"] == NODES
    assert nodes["apiserver_requests"]["POST localmodelnodes"] == NODES
    # a download PV and PVC per cache (one group each)
    assert nodes["controller_requests"]["POST persistentvolumes"] == CACHES
    assert nodes["controller_writes"] >= NODES + 2 * CACHES


def test_agent_reports_reach_every_cache(result: dict[str, Any]) -> None:
    status = result["phases"]["status"]
    assert status["converged_seconds"] > 0
    assert status["apiserver_requests"]["PATCH localmodelnodes/status"] == NODES  # the simulated agents
    assert status["controller_requests"].get("PATCH localmodelcaches/status", 0) >= CACHES
    # every node now holds a complete model: its cache-aware label is written once
    assert status["controller_requests"]["PATCH nodes"] == NODES


def test_one_node_changes_cost_writes_per_cache_of_that_node(result: dict[str, Any]) -> None:
    changes = result["one_node_changes"]
    expected = {
        # its entries, its model labels, and its line in each of its caches' status
        "label removed (leaves its group)": {"PATCH localmodelnodes": 1, "PATCH nodes": 1},
        "label restored (rejoins)": {"PATCH localmodelnodes": 1, "PATCH nodes": 1},
        "NotReady": {},
        "Ready again": {},
    }
    for label, writes in expected.items():
        detail = dict(changes[label]["controller_write_detail"])
        per_cache = changes[label]["caches_on_node"]
        # a cache whose copies become complete again records a CopiesComplete Event
        assert detail.pop("POST events", 0) <= per_cache
        assert detail == {**writes, "PATCH localmodelcaches/status": per_cache}


def test_the_agent_watch_sees_only_its_own_object(result: dict[str, Any]) -> None:
    watch = result["agent_watch"]
    assert watch["foreign_events"] == 0
    assert watch["events"] == {"ADDED": 1, "MODIFIED": 1}  # created by the controller, patched by its agent
    assert watch["unfiltered_watch_events_total"] >= 2 * NODES


def test_controller_memory_was_measured(result: dict[str, Any]) -> None:
    memory = result["controller_memory_mib"]
    assert memory["peak"] >= memory["rss_after_nodes"] > 0
