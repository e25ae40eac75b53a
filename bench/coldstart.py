"""Cold start on real nodes: the time from a Pod's creation to "every model file read", with
the model (a) cached by localmodel, (b) downloaded by KServe's pattern (an init container running
kserve-storage into an emptyDir), (c) the same init container running `localmodel fetch`, and
(d) on a plain local directory prepared beforehand (the limit). Same model, same origin, same
node, same reader.

    .venv/bin/python bench/coldstart.py                          # the published run
    .venv/bin/python bench/coldstart.py --models 2x0.01 --runs 1 # a quick look

Needs root (real nodes: kubelets + containerd, docs/realnodes.md), mmdebstrap (the images),
nginx and rclone (the origin).

What runs:
- a RealNodeCluster with two nodes, the product installed on both the way a user does it
  (`localmodel.dev.product.install_product`: `kubectl apply -k deploy/` with the local image);
- the images built here from Debian packages (localmodel.dev.image): the product image, and
  the kserve-storage image (the same root filesystem and venv step, `build_tool_image`);
- the origin: `rclone serve s3` over the models behind nginx with a per-connection rate limit
  (`--per-connection`, default 64m = 64 MiB/s, as the download benchmark's http-cap source),
  listening on the host bridge address 10.244.0.1 that Pods reach;
- per model: a LocalModelNodeGroup over both nodes and a LocalModelCache, waited for at 2/2
  copies (the agent Pods' cgroups are read meanwhile: CPU seconds and peak memory of the real
  download under the DaemonSet's limits); then, `--runs` times, each scenario's Pod on node-1.

The reader (main container, the same in every scenario, python3 of the product image) walks
/mnt/models, reads every file fully, hashes it with sha256 and prints one line with the digests
and its wall-clock times at start and end. The benchmark compares the digests with the source's
and times a run from the wall clock just before `kubectl create` to the reader's "done" time
(host and containers share one clock).

Page caches are dropped before every Pod (`--cache cold`, the default): (a) and (d) read from
disk; (b) and (c) read what their init container has just written, which is in the page cache.

Raw rows go to bench/results/coldstart-<time>.json and a Markdown table to .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlbench.model import BUCKET, PREFIX, Model, ensure_model  # noqa: E402
from dlbench.servers import REPO_ROOT, S3_KEY, S3_REGION, S3_SECRET  # noqa: E402

from tests.servers.ports import free_port, stop_process, wait_for_port  # noqa: E402
from tests.servers.s3 import rclone_binary  # noqa: E402

CACHE = Path.home() / ".cache" / "localmodel"
SCENARIOS = {
    "a": "cached by localmodel",
    "b": "init container: kserve-storage into an emptyDir",
    "c": "init container: localmodel fetch into an emptyDir",
    "d": "limit: hostPath prepared beforehand",
}
NODE = "node-1"
NAMESPACE = "coldstart"
GROUP = "coldstart-workers"
MOUNT = "/mnt/models"

#: The main container of every scenario: reads and hashes every file under the directory,
#: prints one JSON line. Hidden files count too: a tool that leaves extra files behind shows up
#: as a mismatch against the source's list.
READER = r"""
import hashlib, json, os, sys, time
started = time.time()
root = sys.argv[1]
digests, total = {}, 0
for directory, folders, files in os.walk(root):
    folders.sort()
    for name in sorted(files):
        path = os.path.join(directory, name)
        with open(path, "rb", buffering=0) as handle:
            digests[os.path.relpath(path, root)] = hashlib.file_digest(handle, "sha256").hexdigest()
            total += handle.tell()
print("COLDSTART " + json.dumps({"started": started, "done": time.time(), "bytes": total,
                                 "files": digests}), flush=True)
"""

#: KServe's storage-initializer does `Storage.download_files(srcs, dests)` (bench/dlbench).
KSERVE_DRIVER = """\
import sys
from kserve_storage import Storage
args = sys.argv[1:]
Storage.download_files(args[0::2], args[1::2])
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="2x0.25,4x0.5",
                        help="comma-separated SHARDSxGIB model shapes (default 2x0.25,4x0.5: "
                             "0.54 GB and 2.16 GB with the small files of a checkpoint)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument("--scenarios", default="a,b,c,d",
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--per-connection", default="64m", metavar="RATE",
                        help="nginx limit_rate per connection of the origin (default 64m)")
    parser.add_argument("--fetch-verify", choices=("full", "sha256", "none"), default="full",
                        help="`localmodel fetch --verify` in scenario (c) (default full, as shipped)")
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold",
                        help="cold: drop the page cache before every Pod (default)")
    parser.add_argument("--model-cache", type=Path, default=CACHE / "bench-model",
                        help="where the generated models are kept")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the real nodes' work directory (default: a temporary one)")
    parser.add_argument("--image-dir", type=Path, default=REPO_ROOT / ".cache" / "image",
                        help="where the images are built")
    parser.add_argument("--reuse-images", action="store_true",
                        help="use the archives in --image-dir if they exist")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    args.models = [tuple(float(x) for x in shape.split("x")) for shape in args.models.split(",") if shape]
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {set(args.scenarios) - set(SCENARIOS)}")
    return args


# ---- the model and the origin --------------------------------------------------------------------


@dataclass
class BenchModel:
    model: Model
    bucket: str                     # the model's folder name under the origin's root
    digests: dict[str, str]         # relative path -> sha256 of the source

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{BUCKET}/{PREFIX}"

    @property
    def bytes(self) -> int:
        return self.model.total

    @property
    def name(self) -> str:
        return f"coldstart-{self.bucket}"

    @property
    def label(self) -> str:
        return f"{self.bytes / 1e9:.2f} GB ({len(self.model.files)} files)"


def prepare_model(cache: Path, shards: int, scale: float) -> BenchModel:
    model = ensure_model(cache, shards, scale)
    digests = {}
    for path in sorted(model.files):
        with open(model.folder / path, "rb") as handle:
            digests[path] = hashlib.file_digest(handle, "sha256").hexdigest()
    return BenchModel(model, model.root.name, digests)


_NGINX_PROXY = """\
{user}
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen {address}:{port};
        limit_rate {rate};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # S3 signatures cover the Host header: the client's goes through unchanged.
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            # Buffer in memory only (no temp files): nginx takes from rclone as fast as the
            # client drains, and limit_rate caps every client connection.
            proxy_max_temp_file_size 0;
            proxy_read_timeout 600s;
            client_max_body_size 0;
        }}
    }}
}}
"""


@dataclass
class Origin:
    endpoint: str                   # http://ADDRESS:PORT, as Pods reach it
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextmanager
def origin(root: Path, address: str, rate: str, work: Path) -> Iterator[Origin]:
    """rclone serve s3 over `root` (every folder a bucket) on loopback, behind nginx on
    `address` with `limit_rate rate` per connection."""
    work.mkdir(parents=True, exist_ok=True)
    upstream = free_port()
    rclone = subprocess.Popen(
        [rclone_binary(), "serve", "s3", "--addr", f"127.0.0.1:{upstream}",
         "--auth-key", f"{S3_KEY},{S3_SECRET}", "--dir-cache-time", "1000h",
         "--log-level", "ERROR", "--config", os.devnull, str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(work / "rclone.log", "wb"))
    processes = [rclone]
    try:
        wait_for_port(upstream, process=rclone)
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(_NGINX_PROXY.format(
            user="user root;" if os.geteuid() == 0 else "", work=work, address=address,
            port=port, rate=rate, upstream=upstream))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = subprocess.Popen([binary, "-p", str(work), "-c", str(conf), "-e",
                                  str(work / "error.log"), "-g", "daemon off;"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        processes.append(nginx)
        _wait_for_address(address, port, nginx)
        yield Origin(f"http://{address}:{port}", processes)
    finally:
        for process in reversed(processes):
            stop_process(process)


def _wait_for_address(address: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode} before listening")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def s3_env(endpoint: str) -> dict[str, str]:
    """What KServe's storage-initializer gets from an S3 Secret (and `localmodel fetch` reads)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_REGION": S3_REGION, "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"}


def warm_origin(model: BenchModel, endpoint: str) -> None:
    """rclone hashes every object once for its ETag on first listing: do it outside the runs."""
    from localmodel.sources.s3 import S3Source

    source = S3Source(model.uri, s3_env(endpoint))
    try:
        listed = {entry.path: entry.size for entry in source.list_files().files}
    finally:
        source.close()
    if listed != model.model.files:
        raise RuntimeError(f"the origin lists {listed}, expected {model.model.files}")


# ---- the cluster -----------------------------------------------------------------------------


def kubectl_json(cluster: Any, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def apply(cluster: Any, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def set_up_credentials(cluster: Any, installed: Any, endpoint: str) -> str:
    """The S3 Secret and ServiceAccount in the job namespace, the way KServe users give a
    LocalModelCache its credentials. Returns the ServiceAccount's name."""
    host = endpoint.removeprefix("http://")
    apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": installed.job_namespace}})
    apply(cluster, {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "coldstart-s3", "namespace": installed.job_namespace,
                     "annotations": {"serving.kserve.io/s3-endpoint": host,
                                     "serving.kserve.io/s3-usehttps": "0",
                                     "serving.kserve.io/s3-region": S3_REGION}},
        "stringData": {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET},
    }, {
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "coldstart-s3", "namespace": installed.job_namespace},
        "secrets": [{"name": "coldstart-s3"}],
    })
    return "coldstart-s3"


def node_group(total_bytes: int) -> dict[str, Any]:
    limit = f"{total_bytes // 2**30 + 2}Gi"
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup",
        "metadata": {"name": GROUP},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"], "capacity": {"storage": limit},
                "hostPath": {"path": "/models", "type": "DirectoryOrCreate"},
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "local-storage",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kserve/localmodel", "operator": "In", "values": ["worker"]}]}]}},
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": limit}},
                "storageClassName": "local-storage",
            },
        },
    }


def cache_object(model: BenchModel, service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
        "metadata": {"name": model.name, "labels": {"app": "coldstart"}},
        "spec": {"sourceModelUri": model.uri, "modelSize": f"{-(-model.bytes // 2**20)}Mi",
                 "nodeGroups": [GROUP], "serviceAccountName": service_account},
    }


@dataclass
class AgentUsage:
    """One agent Pod's resources while it downloaded one model (cgroup v1 of the Pod)."""

    node: str
    cpu_seconds: float
    peak_memory: int        # memory.max_usage_in_bytes: what the limit applies to (RSS + cache)
    peak_rss: int           # largest total_rss + total_mapped_file sampled (every 0.2 s)
    limit_memory: int
    cpu_limit: str
    failcnt: int            # times the memory limit was hit (page cache reclaimed at the limit)
    oom_kills: int
    download_seconds: float | None   # the agent's startTime -> completionTime (1 s resolution)


class AgentMeter:
    """Samples the agent Pods' memory while a cache downloads; CPU from cpuacct.usage."""

    def __init__(self, cluster: Any, installed: Any) -> None:
        self.cluster = cluster
        self.pods = installed.agent_pods(cluster)
        self.cpu_limit = next(
            c["resources"]["limits"].get("cpu", "-") for pod in self.pods.values()
            for c in pod["spec"]["containers"])
        self.dirs = {node: (cluster.node(node).pod_cgroup(pod["metadata"]["uid"], "memory"),
                            cluster.node(node).pod_cgroup(pod["metadata"]["uid"], "cpuacct"))
                     for node, pod in self.pods.items()}
        self.peak_rss = dict.fromkeys(self.dirs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> AgentMeter:
        self.cpu_before = {}
        self.failcnt_before = {}
        self.oom_before = {}
        for node, (memory, cpuacct) in self.dirs.items():
            (memory / "memory.max_usage_in_bytes").write_text("0")
            self.failcnt_before[node] = int((memory / "memory.failcnt").read_text())
            self.oom_before[node] = _oom_kills(memory)
            self.cpu_before[node] = int((cpuacct / "cpuacct.usage").read_text())
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for node, (memory, _) in self.dirs.items():
                stat = _memory_stat(memory)
                rss = stat.get("total_rss", 0) + stat.get("total_mapped_file", 0)
                self.peak_rss[node] = max(self.peak_rss[node], rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def usage(self, downloads: dict[str, float | None]) -> list[AgentUsage]:
        rows = []
        for node, (memory, cpuacct) in self.dirs.items():
            rows.append(AgentUsage(
                node=node,
                cpu_seconds=(int((cpuacct / "cpuacct.usage").read_text()) - self.cpu_before[node]) / 1e9,
                peak_memory=int((memory / "memory.max_usage_in_bytes").read_text()),
                peak_rss=self.peak_rss[node],
                limit_memory=int((memory / "memory.limit_in_bytes").read_text()),
                cpu_limit=str(self.cpu_limit),
                failcnt=int((memory / "memory.failcnt").read_text()) - self.failcnt_before[node],
                oom_kills=_oom_kills(memory) - self.oom_before[node],
                download_seconds=downloads.get(node),
            ))
        return rows


def _memory_stat(directory: Path) -> dict[str, int]:
    stat = {}
    for line in (directory / "memory.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        stat[key] = int(value)
    return stat


def _oom_kills(directory: Path) -> int:
    for line in (directory / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    return 0


def cache_to_both_nodes(cluster: Any, installed: Any, model: BenchModel, service_account: str,
                        timeout: float) -> list[AgentUsage]:
    """Creates the model's LocalModelCache and waits for 2/2 copies, metering the agents."""
    with AgentMeter(cluster, installed) as meter:
        apply(cluster, cache_object(model, service_account))
        deadline = time.monotonic() + timeout
        while True:
            status = kubectl_json(cluster, "get", "localmodelcache", model.name).get("status", {})
            copies = status.get("copies", {})
            if copies.get("available") == len(installed.nodes) == copies.get("total"):
                break
            if copies.get("failed") or time.monotonic() > deadline:
                raise RuntimeError(f"cache {model.name} not 2/2: {json.dumps(status)}")
            time.sleep(0.5)
    downloads: dict[str, float | None] = {}
    key = hashlib.sha256(model.uri.encode()).hexdigest()[:16]
    for node in installed.nodes:
        details = kubectl_json(cluster, "get", "localmodelnode", node).get("status", {}).get("modelDetails", {})
        detail = next((d for d in details.values() if d.get("storageKey") == key), {})
        downloads[node] = _seconds_between(detail.get("startTime"), detail.get("completionTime"))
    return meter.usage(downloads)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return _timestamp(end) - _timestamp(start)


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ---- the Pods ---------------------------------------------------------------------------------


def scenario_pod(scenario: str, name: str, model: BenchModel, endpoint: str, product_image: str,
                 kserve_image: str, kserve_python: str, fetch_verify: str = "full") -> dict[str, Any]:
    main: dict[str, Any] = {
        "name": "main", "image": product_image, "imagePullPolicy": "Never",
        "command": ["python3", "-c", READER, MOUNT],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "nodeSelector": {"kubernetes.io/hostname": NODE},
        "containers": [main],
    }
    labels = {"app": "coldstart", "coldstart/scenario": scenario}
    env = [{"name": k, "value": v} for k, v in s3_env(endpoint).items()]
    if scenario == "a":
        # The pod webhook mounts the serving PVC at /mnt/models (subPath models/<key>).
        labels["localmodel.kserve.io/cache"] = model.name
    elif scenario == "b":
        spec["volumes"] = [{"name": "model", "emptyDir": {}}]
        spec["initContainers"] = [{
            "name": "storage-initializer", "image": kserve_image, "imagePullPolicy": "Never",
            "command": [kserve_python, "-c", KSERVE_DRIVER, model.uri, MOUNT], "env": env,
            "volumeMounts": [{"name": "model", "mountPath": MOUNT}],
        }]
        main["volumeMounts"] = [{"name": "model", "mountPath": MOUNT, "readOnly": True}]
    elif scenario == "c":
        # localmodel fetch keeps its journal and manifest beside DEST (<parent>/.localmodel):
        # DEST is a folder of the emptyDir, which the main container mounts alone.
        spec["volumes"] = [{"name": "work", "emptyDir": {}}]
        spec["initContainers"] = [{
            "name": "storage-initializer", "image": product_image, "imagePullPolicy": "Never",
            "command": ["localmodel", "fetch", "--progress", "none", "--verify", fetch_verify,
                        model.uri, "/work/model"],
            "env": env, "volumeMounts": [{"name": "work", "mountPath": "/work"}],
        }]
        main["volumeMounts"] = [{"name": "work", "mountPath": MOUNT, "subPath": "model", "readOnly": True}]
    elif scenario == "d":
        spec["volumes"] = [{"name": "model", "hostPath": {"path": str(model.model.folder), "type": "Directory"}}]
        main["volumeMounts"] = [{"name": "model", "mountPath": MOUNT, "readOnly": True}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels}, "spec": spec}


@dataclass
class Row:
    model: str
    bytes: int
    scenario: str
    run: int
    cache: str
    seconds: float | None               # client create call -> reader done
    seconds_from_creation: float | None  # creationTimestamp (1 s resolution) -> reader done
    to_reader_start: float | None       # client create call -> reader started
    read_seconds: float | None          # reader started -> done
    init_seconds: float | None          # init container startedAt -> finishedAt (1 s resolution)
    files_ok: bool
    files: int
    problems: list[str]
    load: float


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_pod(cluster: Any, pod: dict[str, Any], model: BenchModel, scenario: str, run: int,
            cache: str, timeout: float) -> Row:
    name = pod["metadata"]["name"]
    if cache == "cold":
        drop_caches()
    load = os.getloadavg()[0]
    created = time.time()
    cluster.kubectl("create", "-f", "-", input=json.dumps(pod))
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        current = kubectl_json(cluster, "get", "pod", "-n", NAMESPACE, name)
        phase = current.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        if time.monotonic() > deadline:
            problems.append(f"timed out in phase {phase}")
            break
        time.sleep(0.5)
    if phase != "Succeeded":
        problems.append(f"phase {phase}: {json.dumps(current.get('status', {}))[:2000]}")
    logs = cluster.kubectl("logs", "-n", NAMESPACE, name, "-c", "main", check=False).stdout
    report = next((json.loads(line.removeprefix("COLDSTART "))
                   for line in logs.splitlines() if line.startswith("COLDSTART ")), None)
    if report is None:
        init_logs = cluster.kubectl("logs", "-n", NAMESPACE, name, "--all-containers", check=False)
        problems.append("no report from the reader: " + (init_logs.stdout + init_logs.stderr)[-2000:])
    files_ok = report is not None and report["files"] == model.digests
    if report is not None and not files_ok:
        wrong = sorted(set(report["files"].items()) ^ set(model.digests.items()))
        problems.append(f"files differ from the source: {wrong[:6]}")
    init = current.get("status", {}).get("initContainerStatuses", [])
    init_seconds = None
    if init and "terminated" in init[0].get("state", {}):
        state = init[0]["state"]["terminated"]
        init_seconds = _seconds_between(state.get("startedAt"), state.get("finishedAt"))
    creation = _timestamp(current["metadata"]["creationTimestamp"])
    cluster.kubectl("delete", "pod", "-n", NAMESPACE, name, "--wait=true", "--timeout=120s", timeout=150,
                    check=False)
    done = report["done"] if report else None
    return Row(
        model=model.label, bytes=model.bytes, scenario=scenario, run=run, cache=cache,
        seconds=done - created if done else None,
        seconds_from_creation=done - creation if done else None,
        to_reader_start=report["started"] - created if report else None,
        read_seconds=report["done"] - report["started"] if report else None,
        init_seconds=init_seconds, files_ok=files_ok, files=len(report["files"]) if report else 0,
        problems=problems, load=round(load, 2),
    )


def warm_up_consumer(cluster: Any, model: BenchModel, product_image: str, timeout: float) -> Row:
    """The first Pod labelled for a cache in a namespace makes the controller create the
    serving PV/PVC there; the runs measure the steady state that follows (recorded apart)."""
    pod = scenario_pod("a", f"warmup-{uuid.uuid4().hex[:6]}", model, "", product_image, "", "")
    return run_pod(cluster, pod, model, "a (first Pod in the namespace)", 0, "warm", timeout)


# ---- the run ------------------------------------------------------------------------------------


def build_images(args: argparse.Namespace) -> tuple[Path, str, Path, str, str]:
    """(product archive, reference, kserve-storage archive, reference, its python)."""
    from localmodel.dev.image import (DEFAULT_REFERENCE, KSERVE_STORAGE_IMAGE, archive_name,
                                      build_image, build_tool_image)

    args.image_dir.mkdir(parents=True, exist_ok=True)
    log = args.image_dir / "coldstart-build.log"
    product = args.image_dir / archive_name()
    if not (args.reuse_images and product.exists()):
        print("# building the product image (localmodel dev image)", flush=True)
        product = build_image(output_dir=args.image_dir, log=log).archive
    tool = KSERVE_STORAGE_IMAGE
    kserve = args.image_dir / f"{tool.name}.oci.tar"
    if "b" in args.scenarios and not (args.reuse_images and kserve.exists()):
        print(f"# building the {tool.name} image", flush=True)
        kserve = build_tool_image(args.image_dir, tool, log=log).archive
    return product, DEFAULT_REFERENCE, kserve, tool.reference, f"{tool.venv_path}/bin/python"


def run_benchmark(cluster: Any, args: argparse.Namespace, images: tuple[Path, str, Path, str, str],
                  work: Path) -> dict[str, Any]:
    """Everything after the cluster is up; `cluster` is a started RealNodeCluster with two
    nodes. Returns the result document."""
    from localmodel.dev.nodes import HOST_ADDRESS
    from localmodel.dev.product import install_product

    product_archive, product_image, kserve_archive, kserve_image, kserve_python = images
    work.mkdir(parents=True, exist_ok=True)
    models = [prepare_model(args.model_cache, int(shards), scale) for shards, scale in args.models]
    started = time.monotonic()
    installed = install_product(cluster, product_image, archive=product_archive, workdir=work)
    print(f"# product installed in {time.monotonic() - started:.0f} s", flush=True)
    if "b" in args.scenarios:
        cluster.import_image(kserve_archive)
    rows: list[Row] = []
    first_pods: list[Row] = []
    agents: dict[str, list[AgentUsage]] = {}
    with origin(args.model_cache, HOST_ADDRESS, args.per_connection, work / "origin") as server:
        service_account = set_up_credentials(cluster, installed, server.endpoint)
        apply(cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        apply(cluster, node_group(sum(m.bytes for m in models)))
        for model in models:
            warm_origin(model, server.endpoint)
            if "a" in args.scenarios:
                print(f"# {model.label}: LocalModelCache {model.name} to 2/2", flush=True)
                agents[model.label] = [asdict(u) for u in cache_to_both_nodes(
                    cluster, installed, model, service_account, timeout=600 + model.bytes / 20e6)]
                first_pods.append(warm_up_consumer(cluster, model, product_image, 300))
            timeout = 300 + model.bytes / 10e6
            for run in range(1, args.runs + 1):
                for scenario in args.scenarios:
                    pod = scenario_pod(scenario, f"{scenario}-{uuid.uuid4().hex[:8]}", model,
                                       server.endpoint, product_image, kserve_image, kserve_python,
                                       args.fetch_verify)
                    row = run_pod(cluster, pod, model, scenario, run, args.cache, timeout)
                    rows.append(row)
                    print(f"{model.label} ({scenario}) run {run}: "
                          + (f"{row.seconds:.2f} s (read {row.read_seconds:.2f} s)" if row.seconds else "failed")
                          + (f" PROBLEMS {row.problems}" if row.problems else ""), flush=True)
            if "a" in args.scenarios:
                cluster.kubectl("delete", "localmodelcache", model.name, "--wait=false", check=False)
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/coldstart.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "processor": platform.processor() or platform.machine()},
        "origin": f"rclone serve s3 behind nginx, limit_rate {args.per_connection} per connection",
        "node": NODE, "cache": args.cache,
        "models": {m.label: {"uri": m.uri, "bytes": m.bytes, "files": len(m.model.files)} for m in models},
        "scenarios": {s: SCENARIOS[s] + (f" (--verify {args.fetch_verify})" if s == "c" else "")
                      for s in args.scenarios},
        "fetch_verify": args.fetch_verify,
        "rows": [asdict(r) for r in rows],
        "first_pods": [asdict(r) for r in first_pods],
        "agents": agents,
        "install": installed.timings,
    }


def remove_objects(cluster: Any) -> None:
    """What run_benchmark made besides the product: the consumers' namespace, the caches, the
    node group (the product stays installed)."""
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true", "--timeout=120s",
                    timeout=150, check=False)
    caches = cluster.kubectl("get", "localmodelcache", "-l", "app=coldstart", "-o", "name", check=False)
    for name in caches.stdout.split():
        cluster.kubectl("delete", name, "--wait=true", "--timeout=120s", timeout=150, check=False)
    cluster.kubectl("delete", "localmodelnodegroup", GROUP, "--ignore-not-found", "--wait=false", check=False)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(document: dict[str, Any]) -> str:
    """The Markdown table: medians per model and scenario, and (a)/(d)."""
    rows = document["rows"]
    lines = [f"Command: `{document['command']}`  ", f"When: {document['when']}; origin: {document['origin']}; "
             f"page cache: {document['cache']}; Pods on {document['node']}.", ""]
    scenarios = list(document["scenarios"])
    header = "| model | " + " | ".join(f"({s}) {document['scenarios'][s]}" for s in scenarios)
    if {"a", "d"} <= set(scenarios):
        header += " | (a) / (d)"
    lines += [header + " |", "|---" * (len(scenarios) + 1 + ({"a", "d"} <= set(scenarios))) + "|"]
    for label in document["models"]:
        medians = {}
        cells = []
        for s in scenarios:
            times = [r["seconds"] for r in rows if r["model"] == label and r["scenario"] == s and r["seconds"]]
            reads = [r["read_seconds"] for r in rows if r["model"] == label and r["scenario"] == s and r["seconds"]]
            medians[s] = median(times)
            cells.append(f"**{medians[s]:.2f} s** (read {median(reads):.2f} s; {min(times):.2f}–{max(times):.2f}, n={len(times)})"
                         if times else "failed")
        if {"a", "d"} <= set(scenarios):
            cells.append(f"{medians['a'] / medians['d']:.2f}×" if medians["a"] and medians["d"] else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if document["agents"]:
        lines += ["", "Agent Pods during the cache's download (cgroup v1 of the Pod, limits from the DaemonSet):", "",
                  "| model | node | download (s) | CPU s | CPU s/GB | peak memory (limit's measure) | peak RSS | limit | failcnt | OOM kills |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for label, usages in document["agents"].items():
            gigabytes = document["models"][label]["bytes"] / 1e9
            for u in usages:
                lines.append(
                    f"| {label} | {u['node']} | {u['download_seconds'] if u['download_seconds'] is not None else '-'} | "
                    f"{u['cpu_seconds']:.1f} | {u['cpu_seconds'] / gigabytes:.1f} | {u['peak_memory'] / 2**20:.0f} MiB | "
                    f"{u['peak_rss'] / 2**20:.0f} MiB | {u['limit_memory'] / 2**20:.0f} MiB, CPU {u['cpu_limit']} | "
                    f"{u['failcnt']} | {u['oom_kills']} |")
    problems = [r for r in rows if r["problems"]]
    lines += ["", f"Rows with problems: {len(problems)}"]
    return "\n".join(lines) + "\n"


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM, and SIGINT even when started in the background (where the shell ignores it),
    # stop the run through the normal exit: the real nodes are stopped and cleaned up.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from localmodel.dev.nodes import RealNodeCluster

    images = build_images(args)
    for shards, scale in args.models:  # generated before the nodes hold the machine's lock
        ensure_model(args.model_cache, int(shards), scale)
    with ExitStack() as stack:
        if args.workdir is None:
            args.workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coldstart-", dir="/var/tmp")))
        work = args.workdir
        cluster = RealNodeCluster(work / "cluster", nodes=2, node_host_paths=("/models",))
        stack.callback(cluster.remove_data)
        stack.enter_context(cluster)
        print(f"# real nodes ready in {cluster.timings.get('total', 0):.1f} s", flush=True)
        document = run_benchmark(cluster, args, images, work)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (args.out / f"coldstart-{stamp}.json").write_text(json.dumps(document, indent=1) + "\n")
    text = summary(document)
    (args.out / f"coldstart-{stamp}.md").write_text(text)
    print(text)
    return 1 if any(r["problems"] for r in document["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
