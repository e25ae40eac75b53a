"""oci:// next to http:// on the same bytes from the same server, and next to `oras pull`.

    .venv/bin/python bench/oci_fetch.py [--size-mib 1024] [--runs 3] [--dest /dev/shm/oci-bench]

Starts CNCF distribution's registry on loopback (built by hack/build-oci-tools.sh), pushes one
random file of --size-mib as a ModelPack raw layer with `oras push` and as a modelcar image
(one gzip layer holding models/<file>, with `crane append`), then times, each as its own process:

    oci-modelpack   localmodel fetch oci://…/pack:v1       (ranged blob reads, sha256 checked)
    http-blob       localmodel fetch http://…/v2/…/blobs/sha256:…   (the same blob, the http source)
    oras-pull       oras pull …/pack:v1                    (the real client, one stream per blob)
    oci-modelcar    localmodel fetch oci://…/car:v1        (blob, then gunzip + write + sha256)

Reported per tool: median wall seconds, GB/s, client CPU-s per GB (rusage of the child), peak
RSS. Every result is compared with the source file. Numbers go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(command: list[str], **kwargs: object) -> tuple[float, float, int]:
    """(wall s, CPU s, peak RSS KiB) of one child process, from its own rusage (wait4)."""
    with tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, **kwargs)  # type: ignore[call-overload]
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            stderr.seek(0)
            raise RuntimeError(f"{command[:3]} failed: {stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def sha256_of(path: Path) -> str:
    """In pieces: a child inherits this process's peak RSS (Linux keeps it across exec), so the
    bench itself must stay small for the children's peak RSS to mean anything."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while piece := handle.read(2**20):
            digest.update(piece)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dest", type=Path, default=Path("/dev/shm/oci-bench"))
    args = parser.parse_args()
    tools = Path(subprocess.run(["bash", str(REPO / "hack/build-oci-tools.sh")], check=True,
                                capture_output=True, text=True).stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="oci-bench-"))
    port = free_port()
    (work / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    registry = subprocess.Popen([str(tools / "registry"), "serve", str(work / "config.yml")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    env = {**os.environ, "DOCKER_CONFIG": str(work / "docker")}
    try:
        time.sleep(1)
        push = work / "push"
        push.mkdir()
        data_file = push / "model.safetensors"
        with open(data_file, "wb") as handle:
            for _ in range(args.size_mib):
                handle.write(os.urandom(2**20))
        digest = sha256_of(data_file)
        subprocess.run([str(tools / "oras"), "push", "--plain-http", f"{host}/bench/pack:v1",
                        "--artifact-type", "application/vnd.cncf.model.manifest.v1+json",
                        "model.safetensors:application/vnd.cncf.model.weight.v1.raw"],
                       cwd=push, env=env, check=True, capture_output=True)
        with tarfile.open(work / "layer.tar", "w") as tar:
            tar.add(data_file, arcname="models/model.safetensors")
        subprocess.run([str(tools / "crane"), "append", "--insecure", "-f", str(work / "layer.tar"),
                        "-t", f"{host}/bench/car:v1"], env=env, check=True, capture_output=True)
        localmodel = [sys.executable, "-m", "localmodel", "fetch", "--progress", "none"]
        cases = {
            "oci-modelpack": (localmodel + [f"oci://{host}/bench/pack:v1"], "model.safetensors"),
            "http-blob": (localmodel + [f"http://{host}/v2/bench/pack/blobs/sha256:{digest}"],
                          f"sha256:{digest}"),
            "oras-pull": ([str(tools / "oras"), "pull", "--plain-http", f"{host}/bench/pack:v1", "-o"],
                          "model.safetensors"),
            "oci-modelcar": (localmodel + [f"oci://{host}/bench/car:v1"], "model.safetensors"),
        }
        size = args.size_mib * 2**20
        print(f"{args.size_mib} MiB, {args.runs} runs, into {args.dest}, {os.cpu_count()} CPUs\n")
        print("| tool | wall s (median) | GB/s | CPU-s/GB | peak RSS MiB |")
        print("|---|---|---|---|---|")
        for name, (command, result_name) in cases.items():
            walls, cpus, rss = [], [], 0
            for _ in range(args.runs):
                shutil.rmtree(args.dest, ignore_errors=True)
                target = args.dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if name == "oras-pull":
                    target.mkdir()
                wall, cpu, peak = run(command + [str(target)], env=env)
                got = sha256_of(target / result_name)
                assert got == digest, f"{name}: wrong bytes"
                walls.append(wall)
                cpus.append(cpu)
                rss = max(rss, peak)
            wall = statistics.median(walls)
            print(f"| {name} | {wall:.2f} | {size / wall / 1e9:.2f} | "
                  f"{statistics.median(cpus) / (size / 1e9):.2f} | {rss / 1024:.0f} |")
        shutil.rmtree(args.dest, ignore_errors=True)
    finally:
        registry.terminate()
        registry.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
