"""CPU-seconds per GB and peak memory of the node agent downloading models in-process.

    .venv/bin/python bench/agent_resources.py [--size-mib 2048] [--runs 3]

Runs the real `localmodel agent --manifest ... --once` as a child process against nginx on
loopback (tests/servers/nginx.py) and reads the child's rusage (user+system CPU, peak RSS) with
os.wait4. An agent with an empty manifest gives the fixed cost of starting (imports, one pass),
which is subtracted to get the per-GB cost. Scenarios:

    shm        one model of one file, into /dev/shm (the software path, no disk)
    disk       the same into a folder on the root filesystem (ext4 here)
    two        two models at once (max concurrent downloads 2): peak memory with both running
    capped     the engine's intake capped at 200 MB/s, like a network-bound source
    https      one model over HTTPS (TLS decryption on top)

The result sets the DaemonSet's CPU limit: throughput under a limit of L cores is at most
L / (CPU-s per GB) GB/s. See bench/README.md for the numbers and the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.servers import nginx as nginx_server  # noqa: E402

MiB = 2**20
SHM = Path("/dev/shm/localmodel-agent-bench")


@dataclass
class Run:
    seconds: float
    cpu: float
    max_rss_mib: float


def run_agent(manifest: Path, root: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    command = [sys.executable, "-c", "from localmodel.cli import main; main()", "agent",
               "--manifest", str(manifest), "--root", str(root), "--once", "--node-name", "bench",
               "--health-port", "-1", "--metrics-port", "-1", "--log-format", "json", "--scrub-interval", "0",
               *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, **(env or {})})
    assert process.stderr is not None
    log = process.stderr.read()
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"agent failed:\n{log.decode()[-3000:]}")
    return Run(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def write_manifest(path: Path, uris: list[str]) -> None:
    path.write_text(json.dumps({"localModels": [{"sourceModelUri": u, "modelName": f"m{i}"}
                                                for i, u in enumerate(uris)]}))


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenarios", nargs="*", default=["shm", "disk", "two", "capped", "https"])
    args = parser.parse_args()
    size = args.size_mib * MiB

    served = SHM / "served"
    served.mkdir(parents=True, exist_ok=True)
    make_file(served / "one.bin", size)
    make_file(served / "half-a.bin", size // 2)
    make_file(served / "half-b.bin", size // 2)
    server = nginx_server.start_nginx(served, SHM / "nginx")
    disk_base = Path(tempfile.mkdtemp(prefix="agent-bench-", dir=os.environ.get("BENCH_DISK_DIR", "/var/tmp")))
    try:
        manifest = SHM / "models.yaml"
        write_manifest(manifest, [])
        baseline = [run_agent(manifest, SHM / "root-empty") for _ in range(args.runs)]
        base_cpu = statistics.median(r.cpu for r in baseline)
        base_rss = statistics.median(r.max_rss_mib for r in baseline)
        print(f"baseline (empty manifest): {base_cpu:.2f} CPU-s, peak RSS {base_rss:.0f} MiB", flush=True)
        print(f"{'scenario':8s} {'GB/s':>6s} {'CPU-s/GB':>9s} {'net CPU-s/GB':>13s} {'peak RSS MiB':>13s}")
        for scenario in args.scenarios:
            uris = [f"{server.http_url}/one.bin"]
            extra: list[str] = []
            env: dict[str, str] = {}
            root_parent = SHM
            if scenario == "disk":
                root_parent = disk_base
            elif scenario == "two":
                uris = [f"{server.http_url}/half-a.bin", f"{server.http_url}/half-b.bin"]
            elif scenario == "capped":
                extra = ["--rate-limit", "200M"]
            elif scenario == "https":
                uris = [f"{server.https_url}/one.bin"]
                env = {"LOCALMODEL_HTTP_CA_BUNDLE": str(server.ca_bundle)}
            write_manifest(manifest, uris)
            runs = []
            for _ in range(args.runs):
                root = root_parent / f"root-{scenario}"
                shutil.rmtree(root, ignore_errors=True)
                runs.append(run_agent(manifest, root, *extra, env=env))
                shutil.rmtree(root, ignore_errors=True)
            gb = size / 1e9
            rate = statistics.median(gb / r.seconds for r in runs)
            cpu = statistics.median(r.cpu / gb for r in runs)
            net = statistics.median((r.cpu - base_cpu) / gb for r in runs)
            rss = max(r.max_rss_mib for r in runs)
            print(f"{scenario:8s} {rate:6.2f} {cpu:9.2f} {net:13.2f} {rss:13.0f}", flush=True)
    finally:
        nginx_server.ports.stop_process(server.process)
        shutil.rmtree(disk_base, ignore_errors=True)
        shutil.rmtree(SHM / "root-empty", ignore_errors=True)


if __name__ == "__main__":
    main()
