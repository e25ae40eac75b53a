"""Throughput and CPU cost of `localmodel.fetch.download` against nginx on loopback.

    .venv/bin/python bench/fetch_nginx.py [--size-mib 1024] [--runs 3] [--https]

Serves one random file from /dev/shm with nginx (tests/servers/nginx.py) and downloads it to
/dev/shm, so the disk is out of the picture. Prints GB/s (wall) and client CPU-seconds per GB
for: the engine as shipped (sha256 of every byte), the engine with hashing stubbed out (the
cost of verification, by difference), and a bare urllib3 ranged-GET loop (the client floor).
Client and server share the machine's cores: compare CPU-s/GB as much as GB/s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import urllib3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from localmodel.fetch import FetchOptions, download  # noqa: E402
from localmodel.fetch import engine as engine_module  # noqa: E402
from localmodel.fetch.hashing import HashResult  # noqa: E402
from tests.servers import nginx as nginx_server  # noqa: E402
from tests.servers import ports  # noqa: E402

MiB = 1024 * 1024
WORK = Path("/dev/shm/localmodel-bench")


class NullHasher:
    """Stands in for FileHasher to measure the engine without verification."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def update(self, data: object) -> None:
        pass

    def finish(self, path: str) -> HashResult:
        return HashResult("0" * 64, provider_checked=False)


def cpu_seconds_of(pid: int) -> float:
    """CPU seconds of a process and its children (nginx's master forks the worker)."""
    total = 0.0
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        pids += [int(child) for child in (task / "children").read_text().split()]
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def engine_run(url: str, settings: dict[str, str], options: FetchOptions, hashing: bool) -> None:
    dest = WORK / "out"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(WORK / ".localmodel", ignore_errors=True)
    # Bench-only stub: swap the engine's hasher class for the run.
    original = getattr(engine_module, "FileHasher")
    if not hashing:
        setattr(engine_module, "FileHasher", NullHasher)
    try:
        download(url, dest, settings=settings, options=options)
    finally:
        setattr(engine_module, "FileHasher", original)


def raw_run(url: str, settings: dict[str, str], options: FetchOptions) -> None:
    ca = settings.get("LOCALMODEL_HTTP_CA_BUNDLE")
    pool = urllib3.PoolManager(maxsize=options.concurrency, ca_certs=ca)
    size = int(pool.request("HEAD", url).headers["Content-Length"])
    path = WORK / "raw.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    os.ftruncate(fd, size)

    def get(start: int) -> None:
        end = min(size, start + options.chunk_size)
        response = pool.request("GET", url, headers={"Range": f"bytes={start}-{end - 1}"},
                                preload_content=False)
        buffer = memoryview(bytearray(512 * 1024))
        position = start
        while position < end:
            count = response._fp.readinto(buffer[: min(len(buffer), end - position)])  # type: ignore[attr-defined]
            os.pwrite(fd, buffer[:count], position)
            position += count
        response.release_conn()

    with ThreadPoolExecutor(options.concurrency) as pool_threads:
        list(pool_threads.map(get, range(0, size, options.chunk_size)))
    os.close(fd)
    path.unlink()


def measure(label: str, run, size: int, server_pid: int, runs: int) -> None:  # type: ignore[no-untyped-def]
    rates, client_cpu, server_cpu = [], [], []
    for _ in range(runs):
        wall0, cpu0, srv0 = time.perf_counter(), time.process_time(), cpu_seconds_of(server_pid)
        run()
        wall = time.perf_counter() - wall0
        rates.append(size / wall / 1e9)
        client_cpu.append((time.process_time() - cpu0) / (size / 1e9))
        server_cpu.append((cpu_seconds_of(server_pid) - srv0) / (size / 1e9))
    print(f"{label:34s} {statistics.median(rates):5.2f} GB/s (best {max(rates):.2f})   "
          f"client {statistics.median(client_cpu):4.2f} CPU-s/GB   "
          f"nginx {statistics.median(server_cpu):4.2f} CPU-s/GB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--https", action="store_true")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--chunk-mib", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--rate-limit-mb", type=float, default=None,
                        help="cap the engine's intake (MB/s) to mimic a network-bound source: "
                             "then hashing should cost no wall time, only CPU")
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    root = WORK / "root"
    root.mkdir(exist_ok=True)
    model = root / "model.bin"
    size = args.size_mib * MiB
    if not model.exists() or model.stat().st_size != size:
        with open(model, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(MiB))
    server = nginx_server.start_nginx(root, WORK / "nginx")
    try:
        base = server.https_url if args.https else server.http_url
        url = f"{base}/model.bin"
        settings = {"LOCALMODEL_HTTP_CA_BUNDLE": str(server.ca_bundle)}
        print(f"{args.size_mib} MiB over {'HTTPS' if args.https else 'HTTP'}, "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
        for concurrency in args.concurrency:
            for chunk in args.chunk_mib:
                options = FetchOptions(
                    concurrency=concurrency, chunk_size=chunk * MiB, fsync=False,
                    rate_limit=args.rate_limit_mb * 1e6 if args.rate_limit_mb else None)
                tag = f"c={concurrency} chunk={chunk}Mi"
                measure(f"engine, sha256      {tag}",
                        lambda: engine_run(url, settings, options, True), size, server.process.pid,
                        args.runs)
                measure(f"engine, no hashing  {tag}",
                        lambda: engine_run(url, settings, options, False), size,
                        server.process.pid, args.runs)
                if not args.rate_limit_mb:
                    measure(f"bare urllib3 loop   {tag}",
                            lambda: raw_run(url, settings, options), size, server.process.pid,
                            args.runs)
        digest = hashlib.sha256()
        with open(model, "rb") as handle:
            while block := handle.read(MiB):
                digest.update(block)
        engine_run(url, settings, FetchOptions(fsync=False), True)
        assert (WORK / "out" / "model.bin").read_bytes() == model.read_bytes()
    finally:
        ports.stop_process(server.process)
        shutil.rmtree(WORK / "out", ignore_errors=True)
        shutil.rmtree(WORK / ".localmodel", ignore_errors=True)


if __name__ == "__main__":
    main()
