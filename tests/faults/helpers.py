"""Small helpers shared by the fault tests: spec entries, secrets, byte-range arithmetic."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from localmodel.api.keys import storage_key
from localmodel.fetch.ranges import RangeSet

MiB = 2**20


def entry(uri: str, name: str, **extra: Any) -> dict[str, Any]:
    """One LocalModelNode spec entry of a cluster cache."""
    return {"sourceModelUri": uri, "modelName": name, "namespace": "", **extra}


def secret(namespace: str, name: str, data: Mapping[str, str]) -> Secret:
    return Secret(metadata=ObjectMeta(name=name, namespace=namespace),
                  data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})


def hub_storage_config(client: Client, namespace: str, endpoint: str, **more: str) -> None:
    """The storage-config secret with key "hub": the local HF endpoint (KServe's storage spec)."""
    data = {"hub": json.dumps({"type": "hf", "endpoint": endpoint}), **more}
    client.create(secret(namespace, "storage-config", data))


def model_dir(root: Path, uri: str) -> Path:
    return root / "models" / storage_key(uri)


def union(ranges: Iterable[tuple[int, int]]) -> RangeSet:
    return RangeSet(ranges)


def overlap(a: RangeSet, b: RangeSet) -> int:
    """Bytes in both sets."""
    total = 0
    for start, end in a:
        for other_start, other_end in b:
            total += max(0, min(end, other_end) - max(start, other_start))
    return total


def journal(staging: Path) -> tuple[dict[str, RangeSet], dict[str, int]]:
    """(path → bytes the staging journal vouches for, path → size) of one staging folder.
    A file recorded as verified counts whole."""
    try:
        plan = json.loads((staging / "plan.json").read_text())
        lines = (staging / "journal.jsonl").read_text().splitlines()
    except (OSError, ValueError):
        return {}, {}
    paths = {index: str(item[0]) for index, item in enumerate(plan["files"])}
    sizes = {str(item[0]): int(item[1]) for item in plan["files"]}
    done: dict[str, RangeSet] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        path = paths.get(int(record["f"]))
        if path is None:
            continue
        if record.get("reset"):
            done[path] = RangeSet()  # the file was started again from nothing
            continue
        ranges = done.setdefault(path, RangeSet())
        if "sha256" in record:
            ranges.add(0, sizes[path])
        else:
            ranges.add(int(record["s"]), int(record["e"]))
    return done, sizes
