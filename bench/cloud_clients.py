"""Compare the data path of localmodel's GCS, Azure and HF sources with the official clients.

Run: .venv/bin/python bench/cloud_clients.py {hf,gcs,azure} [--size-mib 256] [--files 2]
     [--threads 8] [--part-mib 16] [--rounds 2]

Each run starts the local server for that protocol in its own process (the local HF endpoint
serving files from /dev/shm, gcp-storage-emulator, azurite), stores random files in it, and
reads every file in `part` ranges from a pool of threads with each client, discarding the bytes.
It prints GB/s (wall) and client CPU-seconds per GB (this process only). Client and server share
the 2 cores, and the emulators are slow servers, so CPU-s/GB is the number to compare.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.azure import ACCOUNT, ACCOUNT_KEY, azurite_binary  # noqa: E402
from tests.servers.ports import free_port, stop_process, wait_for_port  # noqa: E402

Reader = Callable[[str, int, int], Iterator[bytes]]
Setup = tuple[dict[str, Callable[[], Reader]], Callable[[], None]]
CHUNK = 512 * 1024


def _measure(name: str, read: Reader, sizes: dict[str, int], part: int, threads: int) -> None:
    jobs = [(path, off, min(part, size - off)) for path, size in sizes.items()
            for off in range(0, size, part)]

    def one(job: tuple[str, int, int]) -> int:
        got = sum(len(chunk) for chunk in read(*job))
        assert got == job[2], (name, job, got)
        return got

    one(jobs[0])  # connections, imports, tokens
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, jobs))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    gb = total / 1e9
    print(f"{name:26s} {gb / wall:5.2f} GB/s  {cpu / gb:5.2f} client CPU-s/GB  ({wall:.2f} s)",
          flush=True)


# -- Hugging Face -------------------------------------------------------------------------------


def _hf(root: Path, sizes: dict[str, int]) -> Setup:
    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.hf", "--repo",
                             f"bench/model={root}"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()

    def localmodel() -> Reader:
        from localmodel.sources.hf import HFSource

        source = HFSource("hf://bench/model", {"HF_ENDPOINT": url})
        source.list_files()
        return source.read_range

    def httpx2_like_huggingface_hub() -> Reader:
        import httpx2

        client = httpx2.Client(follow_redirects=True, limits=httpx2.Limits(max_connections=64))

        def read(path: str, offset: int, length: int) -> Iterator[bytes]:
            headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
            with client.stream("GET", f"{url}/bench/model/resolve/main/{path}",
                               headers=headers) as resp:
                yield from resp.iter_raw(CHUNK)

        return read

    def stop() -> None:
        stop_process(proc)  # type: ignore[arg-type]

    return {"localmodel HFSource": localmodel,
            "httpx2 (huggingface_hub's)": httpx2_like_huggingface_hub}, stop


def _hf_snapshot(root: Path, threads: int) -> None:
    """End to end, for reference: huggingface_hub.snapshot_download into /dev/shm."""
    from huggingface_hub import snapshot_download

    proc = subprocess.Popen([sys.executable, "-m", "tests.servers.hf", "--repo",
                             f"bench/model={root}"], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    target = Path(tempfile.mkdtemp(prefix="lm-bench-snap-", dir="/dev/shm"))
    try:
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        snapshot_download("bench/model", endpoint=url, local_dir=target, max_workers=threads,
                          token=False)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        gb = total / 1e9
        print(f"{'snapshot_download->shm':26s} {gb / wall:5.2f} GB/s  {cpu / gb:5.2f} client "
              f"CPU-s/GB  ({wall:.2f} s, includes writing files)", flush=True)
    finally:
        shutil.rmtree(target)
        stop_process(proc)  # type: ignore[arg-type]


# -- GCS ----------------------------------------------------------------------------------------


def _gcs(root: Path, sizes: dict[str, int]) -> Setup:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gcp-storage-emulator"), "start",
                             "-H", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
                            stdout=subprocess.DEVNULL)
    wait_for_port(port, process=proc)
    endpoint = f"http://127.0.0.1:{port}"
    client = storage.Client(project="bench", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": endpoint})
    bucket = client.create_bucket("bench")
    for path in sizes:
        bucket.blob(f"model/{path}").upload_from_filename(str(root / path))

    def localmodel() -> Reader:
        from localmodel.sources.gcs import GCSSource

        source = GCSSource("gs://bench/model", {"STORAGE_EMULATOR_HOST": endpoint})
        source.list_files()
        return source.read_range

    def official() -> Reader:
        def read(path: str, offset: int, length: int) -> Iterator[bytes]:
            blob = bucket.blob(f"model/{path}")
            yield blob.download_as_bytes(start=offset, end=offset + length - 1, raw_download=True,
                                         checksum=None)

        return read

    return {"localmodel GCSSource": localmodel,
            "google-cloud-storage": official}, lambda: stop_process(proc)  # type: ignore[arg-type]


# -- Azure --------------------------------------------------------------------------------------


def _azure(root: Path, sizes: dict[str, int]) -> Setup:
    from azure.storage.blob import BlobServiceClient

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="lm-bench-azurite-")
    proc = subprocess.Popen([azurite_binary(), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--inMemoryPersistence", "--disableTelemetry",
                             "--skipApiVersionCheck", "--loose"],
                            stdout=subprocess.DEVNULL, cwd=workdir)
    wait_for_port(port, process=proc, timeout=60)
    endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
    conn = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={endpoint};")
    container = BlobServiceClient.from_connection_string(conn).create_container("bench")
    for path in sizes:
        with open(root / path, "rb") as f:
            container.upload_blob(f"model/{path}", f, max_concurrency=4)

    def localmodel() -> Reader:
        from localmodel.sources.azure import AzureBlobSource

        source = AzureBlobSource(f"{endpoint}/bench/model", {
            "AZURE_STORAGE_BLOB_ENDPOINT": endpoint, "AZURE_STORAGE_ACCESS_KEY": ACCOUNT_KEY})
        source.list_files()
        return source.read_range

    def official() -> Reader:
        service = BlobServiceClient.from_connection_string(conn)
        sdk_container = service.get_container_client("bench")

        def read(path: str, offset: int, length: int) -> Iterator[bytes]:
            stream = sdk_container.download_blob(f"model/{path}", offset=offset, length=length)
            yield from stream.chunks()

        return read

    def stop() -> None:
        stop_process(proc)  # type: ignore[arg-type]
        shutil.rmtree(workdir, ignore_errors=True)

    return {"localmodel AzureBlobSource": localmodel, "azure-storage-blob": official}, stop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("protocol", choices=["hf", "gcs", "azure"])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    size = args.size_mib << 20
    root = Path(tempfile.mkdtemp(prefix="lm-bench-", dir="/dev/shm"))
    try:
        sizes = {}
        for i in range(args.files):
            (root / f"shard{i}.safetensors").write_bytes(os.urandom(size))
            sizes[f"shard{i}.safetensors"] = size
        setup = {"hf": _hf, "gcs": _gcs, "azure": _azure}[args.protocol]
        makers, stop = setup(root, sizes)
        print(f"{args.protocol}: {args.files} x {args.size_mib} MiB, {args.part_mib} MiB ranges, "
              f"{args.threads} threads")
        try:
            readers = {name: make() for name, make in makers.items()}
            for _ in range(args.rounds):
                for name, read in readers.items():
                    _measure(name, read, sizes, args.part_mib << 20, args.threads)
        finally:
            stop()
        if args.protocol == "hf":
            _hf_snapshot(root, args.threads)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
