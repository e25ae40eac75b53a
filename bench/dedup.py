"""Content dedup: a model with two revisions that share most shards, fetched into one cache root
with the content store (fetch/blobs.py) and without it.

    .venv/bin/python bench/dedup.py [--shards 8] [--shard-mib 256] [--changed 1] [--runs 1]
                                    [--root DIR]

The origin is the project's local Hugging Face endpoint (tests/servers/hf.py, in this process,
files sent from disk with sendfile): revision v1 has `--shards` LFS shards of `--shard-mib` MiB
plus the small files of a checkpoint; v2 replaces `--changed` shards and the config. Each mode
starts from an empty root (on disk, default ~/.cache/localmodel/bench-dedup-root) and fetches v1
then v2 into `<root>/models/<key>` with the engine, in a child process (its CPU is measured
apart from the origin's), exactly as the agent does (`Layout.in_store`, fsync on).

Reported per mode and step: bytes the origin sent, bytes linked from the store instead,
wall seconds, client CPU seconds; and at the end the bytes on disk (allocated blocks of every
inode under the root once, the `used` the agent reports) against the sum of the two models.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from localmodel.api.keys import storage_key  # noqa: E402
from localmodel.fetch import Layout, read_manifest, verify_full  # noqa: E402
from tests.servers.hf import LocalHub  # noqa: E402

CACHE = Path.home() / ".cache" / "localmodel"
MiB = 2**20
REPO = "bench/two-revisions"

_CHILD = """
import json, sys
from localmodel.api.keys import storage_key
from localmodel.fetch import FetchOptions, Layout, download
uri, root, endpoint, dedup = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
reports = []
download(uri, Layout.in_store(root, storage_key(uri)), settings={"HF_ENDPOINT": endpoint},
         options=FetchOptions(dedup=dedup), progress=reports.append)
print(json.dumps({"reused": reports[-1].bytes_reused if reports else 0}))
"""


def write_random(path: Path, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = min(left, 8 * MiB)
            handle.write(rnd.randbytes(piece))
            left -= piece


def make_revisions(folder: Path, shards: int, shard_bytes: int, changed: int) -> tuple[dict[str, Path], dict[str, Path]]:
    """Two revisions as files on disk (generated once, then reused)."""
    names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    first: dict[str, Path] = {}
    second: dict[str, Path] = {}
    stamp = folder / f"made-{shards}x{shard_bytes}-{changed}"
    for i, name in enumerate(names):
        first[name] = folder / "v1" / name
        second[name] = folder / "v2" / name if i >= shards - changed else first[name]
    small = {"config.json": (1, 700), "tokenizer.json": (2, 2 * MiB), "generation_config.json": (3, 200)}
    for name, (seed, size) in small.items():
        first[name] = folder / "v1" / name
        second[name] = folder / "v2" / name if name == "config.json" else first[name]
    if not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        for name, path in first.items():
            seed = names.index(name) + 10 if name in names else small[name][0]
            write_random(path, shard_bytes if name in names else small[name][1], seed)
        for name, path in second.items():
            if path.parent.name == "v2":
                seed = (names.index(name) + 1000) if name in names else 1001
                write_random(path, shard_bytes if name in names else small[name][1], seed)
        stamp.touch()
    return first, second


def disk_bytes(root: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every inode under `root`, each once."""
    seen: dict[tuple[int, int], tuple[int, int]] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(Path(folder, name))
            seen[(st.st_dev, st.st_ino)] = (st.st_size, st.st_blocks * 512)
    return sum(a for a, _ in seen.values()), sum(b for _, b in seen.values())


def fetch(hub: LocalHub, uri: str, root: Path, dedup: bool) -> dict[str, float]:
    served = hub.bytes_served
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _CHILD, uri, str(root), hub.url, "1" if dedup else "0"],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    reused = json.loads(result.stdout.strip().splitlines()[-1])["reused"]
    return {"origin_bytes": hub.bytes_served - served, "reused_bytes": reused, "wall_s": wall, "cpu_s": cpu}


def check(root: Path, revisions: dict[str, dict[str, Path]]) -> list[str]:
    """Both models complete and intact (every byte re-hashed against the sha256 the origin
    listed), with exactly the source's files: problems found, [] when none."""
    problems: list[str] = []
    for revision, files in revisions.items():
        layout = Layout.in_store(root, storage_key(f"hf://{REPO}:{revision}"))
        manifest = read_manifest(layout)
        if manifest is None:
            problems.append(f"{revision}: no manifest")
            continue
        problems += [f"{revision}: {p}" for p in verify_full(layout, manifest)]
        if {f.path for f in manifest.files} != set(files):
            problems.append(f"{revision}: the files differ from the source's")
    return problems


def gib(value: float) -> str:
    return f"{value / 2**30:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=256)
    parser.add_argument("--changed", type=int, default=1, help="shards that differ in v2")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--root", type=Path, default=CACHE / "bench-dedup-root")
    parser.add_argument("--model-cache", type=Path, default=CACHE / "bench-dedup-model")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    first, second = make_revisions(args.model_cache, args.shards, args.shard_mib * MiB, args.changed)
    total_1 = sum(p.stat().st_size for p in first.values())
    total_2 = sum(p.stat().st_size for p in second.values())
    hub = LocalHub()
    hub.add_commit(REPO, first, revision="v1", lfs=set(first))
    hub.add_commit(REPO, second, revision="v2", lfs=set(second))
    hub.start()
    rows = []
    try:
        for run in range(args.runs):
            for dedup in (False, True):
                shutil.rmtree(args.root, ignore_errors=True)
                args.root.mkdir(parents=True)
                one = fetch(hub, f"hf://{REPO}:v1", args.root, dedup)
                two = fetch(hub, f"hf://{REPO}:v2", args.root, dedup)
                apparent, allocated = disk_bytes(args.root)
                problems = check(args.root, {"v1": first, "v2": second})
                rows.append({"run": run, "dedup": dedup, "v1": one, "v2": two,
                             "disk_apparent": apparent, "disk_allocated": allocated, "problems": problems})
    finally:
        hub.stop()
        shutil.rmtree(args.root, ignore_errors=True)

    load = os.getloadavg()[0]
    print(f"model: v1 {gib(total_1)} GiB, v2 {gib(total_2)} GiB ({args.shards} shards of {args.shard_mib} MiB, "
          f"{args.changed} changed); sum of the two models {gib(total_1 + total_2)} GiB; load {load:.1f}")
    print("| content store | v1: origin GiB | v1: wall s / CPU s | v2: origin GiB | v2: reused GiB "
          "| v2: wall s / CPU s | on disk GiB (allocated) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        one, two = row["v1"], row["v2"]
        print(f"| {'on' if row['dedup'] else 'off'} | {gib(one['origin_bytes'])} | {one['wall_s']:.1f} / {one['cpu_s']:.1f} "
              f"| {gib(two['origin_bytes'])} | {gib(two['reused_bytes'])} | {two['wall_s']:.1f} / {two['cpu_s']:.1f} "
              f"| {gib(row['disk_apparent'])} ({gib(row['disk_allocated'])}) |")
    for row in rows:
        for problem in row["problems"]:
            print(f"PROBLEM ({'on' if row['dedup'] else 'off'}): {problem}")
    if args.json:
        args.json.write_text(json.dumps({"shards": args.shards, "shard_mib": args.shard_mib, "changed": args.changed,
                                         "v1_bytes": total_1, "v2_bytes": total_2, "load": load, "rows": rows},
                                        indent=1))
    if any(row["problems"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
