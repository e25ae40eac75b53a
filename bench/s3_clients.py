"""Compare S3 data-path clients for ranged GETs against `rclone serve s3` on loopback.

Run: .venv/bin/python bench/s3_clients.py [--size-mib 512] [--files 4] [--threads 8] [--part-mib 64]
     [--clients localmodel,boto3,urllib3-sigv4] (obstore: `pip install obstore`, --part-mib 0)

It writes random files under /dev/shm, serves them with `rclone serve s3`, and reads every file
in `part` ranges from a pool of threads with each client, discarding the bytes. It prints GB/s
(wall) and client CPU-seconds per GB (this process only; rclone's CPU is separate). Client and
server share the machine, so the numbers are CPU-bound: compare CPU-s/GB first.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from localmodel.dev.controlplane import free_port

KEY, SECRET = "benchkey", "benchsecret"
CHUNK = 1 << 20
_SIZES: dict[str, int] = {}


def _boto3_reader(endpoint: str) -> Callable[[str, int, int], Iterator[bytes]]:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(max_pool_connections=64, s3={"addressing_style": "path"},
                      # "when_supported" (the default) makes rclone hash the whole object per GET
                      response_checksum_validation="when_required"),
    )

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        resp = client.get_object(Bucket="bench", Key=key,
                                 Range=f"bytes={offset}-{offset + length - 1}")
        yield from resp["Body"].iter_chunks(CHUNK)

    return read


def _urllib3_sigv4_reader(endpoint: str) -> Callable[[str, int, int], Iterator[bytes]]:
    import urllib3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pool = urllib3.PoolManager(maxsize=64)
    signer = S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1")

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        req = AWSRequest(method="GET", url=f"{endpoint}/bench/{key}",
                         headers={"Range": f"bytes={offset}-{offset + length - 1}"})
        signer.add_auth(req)
        resp = pool.request("GET", req.url, headers=dict(req.headers.items()),
                            preload_content=False)
        try:
            while chunk := resp.read(CHUNK):
                yield chunk
        finally:
            resp.release_conn()

    return read


def _obstore_reader(endpoint: str, as_bytes: bool) -> Callable[[str, int, int], Iterator[bytes]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store("bench", endpoint=endpoint, access_key_id=KEY, secret_access_key=SECRET,
                    region="us-east-1", client_options={"allow_http": True})

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        # rclone answers ranged GETs with 200 + Content-Range, which obstore rejects (NotPartial):
        # it can only be measured here on whole-object reads.
        whole = offset == 0 and length == _SIZES[key]
        options = {} if whole else {"range": (offset, offset + length)}
        result = obstore.get(store, key, options=options)
        for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk) if as_bytes else chunk  # type: ignore[misc]

    return read


def _localmodel_reader(endpoint: str) -> Callable[[str, int, int], Iterator[bytes]]:
    from localmodel.sources.s3 import S3Source

    source = S3Source("s3://bench", {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY,
                                     "AWS_SECRET_ACCESS_KEY": SECRET})
    source.list_files()
    return source.read_range


def _warm(endpoint: str, files: list[str]) -> None:
    """rclone computes each object's MD5 ETag on first access: do it before timing."""
    read = _urllib3_sigv4_reader(endpoint)
    for name in files:
        for _ in read(name, 0, 1):
            pass


def _run(name: str, read: Callable[[str, int, int], Iterator[bytes]], files: list[str],
         size: int, part: int, threads: int) -> None:
    jobs = [(f, off, min(part, size - off)) for f in files for off in range(0, size, part)]

    def one(job: tuple[str, int, int]) -> int:
        got = 0
        for chunk in read(*job):
            got += len(chunk)
        assert got == job[2], (job, got)
        return got

    one(jobs[0])  # warm connections and imports
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, jobs))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    gb = total / 1e9
    print(f"{name:22s} {gb / wall:5.2f} GB/s  {cpu / gb:5.2f} client CPU-s/GB  ({wall:.2f} s)",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--part-mib", type=int, default=64, help="0: whole objects, one GET each")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", default="localmodel,boto3,urllib3-sigv4,obstore",
                    help="obstore needs `pip install obstore` and whole objects (--part-mib 0)")
    args = ap.parse_args()
    size = args.size_mib << 20
    root = Path(tempfile.mkdtemp(prefix="lm-s3bench-", dir="/dev/shm"))
    rclone = shutil.which("rclone", path=os.path.dirname(sys.executable)) or "rclone"
    port = free_port()
    proc = None
    try:
        (root / "bench").mkdir()
        files = []
        for i in range(args.files):
            name = f"shard{i}.bin"
            with open(root / "bench" / name, "wb") as f:
                f.write(os.urandom(size))
            files.append(name)
            _SIZES[name] = size
        proc = subprocess.Popen(
            [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{KEY},{SECRET}",
             "--log-level", "ERROR", str(root)],
        )
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        _warm(endpoint, files)
        makers: dict[str, Callable[[], Callable[[str, int, int], Iterator[bytes]]]] = {
            "localmodel": lambda: _localmodel_reader(endpoint),
            "boto3": lambda: _boto3_reader(endpoint),
            "urllib3-sigv4": lambda: _urllib3_sigv4_reader(endpoint),
            "obstore": lambda: _obstore_reader(endpoint, as_bytes=False),
            "obstore-bytes": lambda: _obstore_reader(endpoint, as_bytes=True),
        }
        print(f"{args.files} x {args.size_mib} MiB, {args.part_mib} MiB ranges, "
              f"{args.threads} threads, {CHUNK >> 10} KiB chunks")
        for _ in range(args.rounds):
            for name in args.clients.split(","):
                part = (args.part_mib << 20) or size
                _run(name, makers[name](), files, size, part, args.threads)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
