#!/usr/bin/env python3
"""Apiserver CPU per kind of write the scale benchmark makes, without a controller running.

    .venv/bin/python bench/scale_write_costs.py [--nodes 1000] [--caches 50] [--groups 3]

Same setup as bench/scale.py (groups, Ready Nodes, caches) and one unfiltered watcher of
LocalModelNodes and caches; then each kind of write is sent on its own and the apiserver's CPU
seconds (from /proc) are divided by the number of writes: LocalModelNode creation, the agents'
status patches, the cache-aware Node labels, and cache status patches (a full nodeStatus map,
then rounds that each flip a sixth of the nodes, as the controller's batched writes do).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the sibling benchmark: layout, setup, the simulated agent)


async def measure(plane: ControlPlane, label: str, jobs: list[Awaitable[Any]], concurrency: int = 32) -> None:
    pid = plane.pids["kube-apiserver"]
    started, cpu = time.monotonic(), scale.cpu_seconds(pid)
    await scale.bounded(jobs, concurrency)
    spent = scale.cpu_seconds(pid) - cpu
    print(f"{label}: {len(jobs)} writes in {time.monotonic() - started:.2f} s, apiserver {spent:.2f} CPU-s "
          f"= {spent / len(jobs) * 1000:.1f} ms per write", flush=True)


def entries(layout: scale.Layout, group: str) -> list[dict[str, Any]]:
    return [{"sourceModelUri": layout.cache_uri(int(c.removeprefix("model-"))), "modelName": c, "namespace": "",
             "nodeGroup": group} for c in sorted(layout.caches_of_group(group))]


def model_labels(layout: scale.Layout, group: str) -> dict[str, str]:
    from localmodel.controller.names import node_model_label

    return {node_model_label(layout.cache_uri(int(c.removeprefix("model-")))): "true"
            for c in layout.caches_of_group(group)}


async def run(plane: ControlPlane, layout: scale.Layout) -> None:
    client = AsyncClient(KubeConfig.from_file(plane.kubeconfig), field_manager="bench")
    await scale.setup(plane, client, layout, 32)
    tracker = scale.Tracker(client)
    await tracker.start()
    names = [layout.node_name(i) for i in range(layout.nodes)]
    groups = {n: layout.node_group(i) for i, n in enumerate(names)}
    await measure(plane, "POST localmodelnodes", [client.create(resources.LocalModelNode(
        {"metadata": {"name": n}, "spec": {"localModels": entries(layout, groups[n])}})) for n in names])
    await measure(plane, "PATCH localmodelnodes/status (agent report)",
                  [scale.report_downloaded(client, layout, n) for n in names])
    await measure(plane, "PATCH nodes (model labels)", [client.patch(
        Node, n, {"metadata": {"labels": model_labels(layout, groups[n])}}, patch_type=PatchType.MERGE) for n in names])

    def cache_status(c: int, members: list[str], value: str, available: int) -> dict[str, Any]:
        return {"status": {"nodeStatus": {n: value for n in members},
                           "copies": {"available": available, "total": len(members), "failed": 0}}}

    members = {c: sorted(layout.nodes_of_group(layout.cache_group(c))) for c in range(layout.caches)}
    await measure(plane, "PATCH localmodelcaches/status (whole nodeStatus map)", [client.patch(
        resources.LocalModelCache.Status, layout.cache_name(c), cache_status(c, members[c], "NodeDownloadPending", 0),
        patch_type=PatchType.MERGE) for c in range(layout.caches)], concurrency=4)
    rounds = 6
    await measure(plane, f"PATCH localmodelcaches/status (1/{rounds} of the nodes flipped)", [client.patch(
        resources.LocalModelCache.Status, layout.cache_name(c),
        {"status": {"nodeStatus": {n: "NodeDownloaded" for n in members[c][r::rounds]},
                    "copies": {"available": sum(len(members[c][k::rounds]) for k in range(r + 1)),
                               "total": len(members[c]), "failed": 0}}},
        patch_type=PatchType.MERGE) for r in range(rounds) for c in range(layout.caches)], concurrency=4)
    await tracker.stop()
    await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--caches", type=int, default=50)
    parser.add_argument("--groups", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localmodel-write-costs-") as workdir:
        with ControlPlane(Path(workdir), controllers=()) as plane:
            asyncio.run(run(plane, scale.Layout(args.nodes, args.caches, args.groups)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
