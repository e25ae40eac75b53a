#!/usr/bin/env python3
"""Scale benchmark: the controller against a real kube-apiserver with 1 000 Nodes and 50 caches.

    .venv/bin/python bench/scale.py [--nodes 1000] [--caches 50] [--groups 3] [--json out.json]

A dedicated control plane (etcd + kube-apiserver, no controller manager) runs in its own
directory. Setup (not measured): the CRDs, 3 LocalModelNodeGroups whose PV nodeAffinity selects
nodes by the label `bench.localmodel.dev/pool`, N Ready Nodes round-robin over the groups, and the
caches round-robin over the groups. Then, measured:

1. `nodes`: start `localmodel controller` as a subprocess (leader election on, as deployed) → every
   LocalModelNode lists exactly its group's caches.
2. `status`: simulated agents patch every LocalModelNode's status as an agent does (modelStatus
   = ModelDownloaded plus the additive modelDetails, disk, modelsDownloaded) → every cache shows
   copies available == total == its group's size.
3. API requests by verb and resource, per phase: the apiserver's `apiserver_request_total` (all
   clients) and the controller's own client-side counters (its `/metrics`).
4. One-node changes (label removed / restored, NotReady / Ready): the controller's writes each
   caused, counted after it went quiet.
5. One agent's watch (field selector `metadata.name=<node>`, list then watch, as the agent does):
   the events it received, against those of an unfiltered watch of all LocalModelNodes.
6. The controller's peak RSS (VmHWM), and CPU seconds of controller, apiserver and etcd.

Everything runs on this machine's cores, the bench's own watchers and simulated agents included,
so the figures are upper bounds for a cluster where they run elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, NodeStatus
from lightkube.types import PatchType
from prometheus_client.parser import text_string_to_metric_families

from localmodel.api.keys import status_key, storage_key
from localmodel.dev.controller_process import ControllerProcess
from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources

REPO = Path(__file__).resolve().parents[1]
POD_NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"
POOL_LABEL = "bench.localmodel.dev/pool"
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"})
GIB = 2**30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1

RequestCounts = dict[tuple[str, str], float]  # (verb, resource[/subresource]) → count
_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- what the cluster should look like ---------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    nodes: int
    caches: int
    groups: int

    def node_name(self, i: int) -> str:
        return f"node-{i:04d}"

    def group_name(self, g: int) -> str:
        return f"pool-{g}"

    def node_group(self, i: int) -> str:
        return self.group_name(i % self.groups)

    def cache_name(self, c: int) -> str:
        return f"model-{c:03d}"

    def cache_group(self, c: int) -> str:
        return self.group_name(c % self.groups)

    def cache_uri(self, c: int) -> str:
        return f"s3://bench-models/{self.cache_name(c)}"

    def caches_of_group(self, group: str) -> set[str]:
        return {self.cache_name(c) for c in range(self.caches) if self.cache_group(c) == group}

    def nodes_of_group(self, group: str) -> set[str]:
        return {self.node_name(i) for i in range(self.nodes) if self.node_group(i) == group}


# --- processes: CPU and memory from /proc -------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def memory_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class CpuClock:
    """CPU seconds of named processes between two marks."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._mark = self._read()

    def _read(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["bench"] = sum(os.times()[:2])
        now["wall"] = time.monotonic()
        return now

    def lap(self) -> dict[str, float]:
        now = self._read()
        spent = {k: round(now[k] - self._mark.get(k, 0.0), 2) for k in now}  # a new process: from 0
        self._mark = now
        return spent


# --- /metrics ----------------------------------------------------------------------------------

def parse_requests(text: str, family: str, sample_suffix: str = "_total") -> RequestCounts:
    """Sum samples of a counter (or a histogram's `_sum`) by (verb, resource[/subresource])."""
    counts: RequestCounts = {}
    for metric in text_string_to_metric_families(text):
        if metric.name != family.removesuffix("_total"):
            continue
        for sample in metric.samples:
            if not sample.name.endswith(sample_suffix):
                continue
            labels = sample.labels
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = (labels.get("verb", ""), resource)
            counts[key] = counts.get(key, 0) + sample.value
    return counts


def diff(after: RequestCounts, before: RequestCounts) -> RequestCounts:
    out = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in out.items() if v}


def writes(counts: RequestCounts, exclude: Iterable[str] = ("leases",)) -> RequestCounts:
    skip = set(exclude)
    return {k: v for k, v in counts.items() if k[0] in WRITE_VERBS and k[1].split("/")[0] not in skip}


def as_table(counts: RequestCounts) -> dict[str, int]:
    return {f"{verb} {resource}": int(n) for (verb, resource), n in sorted(counts.items())
            if verb not in ("seconds", "throttled")}


def seconds_table(counts: RequestCounts) -> dict[str, float]:
    """Time the apiserver spent answering, by verb and resource (not CPU: includes waiting)."""
    return {what: round(n, 2) for (verb, what), n in sorted(counts.items()) if verb == "seconds" and n >= 0.005}


class ApiserverMetrics:
    def __init__(self, plane: ControlPlane, directory: Path) -> None:
        pair = plane.client_ca.issue_client_cert("bench-metrics", "bench-metrics", ["system:masters"], directory)
        context = ssl.create_default_context(cafile=str(plane.server_ca_file))
        context.load_cert_chain(str(pair.cert_file), str(pair.key_file))
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        self._server = plane.server
        self._url = f"{plane.server}/metrics"

    def cpu_profile(self, seconds: int, out: Path) -> None:
        """Go CPU profile of the apiserver (needs --profiling=true); read it with `go tool pprof`."""
        url = f"{self._server}/debug/pprof/profile?seconds={seconds}"
        with self._opener.open(url, timeout=seconds + 60) as response:
            out.write_bytes(response.read())

    def requests(self) -> RequestCounts:
        """Requests served so far; keys ("seconds", verb resource) hold the time spent on them."""
        with self._opener.open(self._url, timeout=120) as response:
            text = response.read().decode()
        counts = parse_requests(text, "apiserver_request_total")
        throttled = [s.value for m in text_string_to_metric_families(text) if m.name == "apiserver_request"
                     for s in m.samples if s.name.endswith("_total") and s.labels.get("code") == "429"]
        counts[("throttled", "429")] = sum(throttled)
        for (verb, resource), seconds in parse_requests(text, "apiserver_request_duration_seconds", "_sum").items():
            if verb not in ("WATCH", "CONNECT"):
                counts[("seconds", f"{verb} {resource}")] = seconds
        return counts


# --- the controller under test -----------------------------------------------------------------

class BenchController(ControllerProcess):
    """The controller under test, with what the benchmark reads off its metrics."""

    def __init__(self, kubeconfig: Path, log_file: Path, workers: int) -> None:
        super().__init__(kubeconfig, POD_NAMESPACE, log_file, identity="bench-controller",
                         args=["--workers", str(workers), "--log-level", "INFO"])

    def requests(self) -> RequestCounts:
        return parse_requests(self.metrics(), "localmodel_kube_api_requests_total")

    def reconciles(self) -> dict[str, float]:
        """Reconciles run so far, by queue."""
        out: dict[str, float] = {}
        for metric in text_string_to_metric_families(self.metrics()):
            if metric.name == "localmodel_controller_reconciles":
                for sample in metric.samples:
                    if sample.name.endswith("_total"):
                        queue = sample.labels["kind"]
                        out[queue] = out.get(queue, 0) + sample.value
        return out

    def activity(self) -> tuple[float, float]:
        """(non-lease requests + reconciles finished, keys queued or being reconciled): the first
        unchanged and the second 0 while the controller is idle. A reconcile waiting on a slow
        apiserver shows as in progress, so a starved machine is never mistaken for a quiet one."""
        text = self.metrics()
        requests = sum(v for (verb, res), v in parse_requests(text, "localmodel_kube_api_requests_total").items()
                       if not res.startswith("leases"))
        reconciles = queued = 0.0
        for metric in text_string_to_metric_families(text):
            if metric.name == "localmodel_controller_reconciles":
                reconciles = sum(s.value for s in metric.samples if s.name.endswith("_total"))
            elif metric.name in ("localmodel_controller_workqueue_depth",
                                 "localmodel_controller_reconciles_in_progress"):
                queued += sum(s.value for s in metric.samples)
        return requests + reconciles, queued


async def first_of(tasks: list[asyncio.Task[None]], events: list[asyncio.Event]) -> None:
    """Wait for every event, failing at once if one of the tasks that should set them dies."""
    waiting = asyncio.ensure_future(asyncio.gather(*(e.wait() for e in events)))
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done():
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            task.result()  # raises what killed it
            raise RuntimeError("a watch ended before it was ready")
    await waiting


async def until(check: Callable[[], bool], what: str, timeout: float, interval: float = 0.05,
                threaded: bool = False) -> float:
    """Poll `check` until true (in a thread when it blocks); returns the monotonic time it was."""
    deadline = time.monotonic() + timeout
    while not (await asyncio.to_thread(check) if threaded else check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic()


async def quiet(controller: BenchController, settle: float = 2.0, timeout: float = 300.0) -> float:
    """Wait until the controller made no request and ran no reconcile for `settle` seconds."""
    deadline = time.monotonic() + timeout
    last, _ = await asyncio.to_thread(controller.activity)
    since = time.monotonic()
    while time.monotonic() - since < settle:
        if time.monotonic() > deadline:
            raise TimeoutError("controller never went quiet")
        await asyncio.sleep(0.25)
        now, queued = await asyncio.to_thread(controller.activity)
        if now != last or queued:
            last, since = now, time.monotonic()
    return since


# --- watching the cluster ----------------------------------------------------------------------

async def list_retrying(client: AsyncClient, resource: Any, **kw: Any) -> tuple[list[Any], str]:
    """List, retrying while a freshly installed CRD's storage is still initializing (429/503)."""
    for attempt in range(100):
        try:
            listing = client.list(resource, **kw)
            items = [item async for item in listing]
            return items, listing.resourceVersion
        except ApiError as error:
            if error.status.code not in (429, 500, 503) or attempt == 99:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


class Tracker:
    """Unfiltered watches of LocalModelNodes and LocalModelCaches, holding what convergence needs.

    The LocalModelNode watch is also the comparison for the agent's filtered watch: it is what
    every agent would receive if it watched all LocalModelNodes (as KServe's agent does).
    """

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.entries: dict[str, frozenset[str]] = {}
        self.copies: dict[str, dict[str, int]] = {}
        self.node_status: dict[str, dict[str, str]] = {}
        self.lmn_events: Counter[str] = Counter()
        self.cache_events: Counter[str] = Counter()
        self.synced = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def _on_lmn(self, event: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if event == "DELETED":
            self.entries.pop(name, None)
            return
        models = (obj.get("spec") or {}).get("localModels") or []
        self.entries[name] = frozenset(m["modelName"] for m in models)

    def _on_cache(self, event: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        self.copies[name] = dict(status.get("copies") or {})
        self.node_status[name] = dict(status.get("nodeStatus") or {})

    async def _follow(self, resource: Any, handle: Callable[[str, dict[str, Any]], None],
                      events: Counter[str], ready: asyncio.Event) -> None:
        items, version = await list_retrying(self.client, resource)
        for item in items:
            handle("ADDED", item.to_dict())
        ready.set()
        while True:
            try:
                async for event, obj in self.client.watch(resource, resource_version=version):
                    raw = obj.to_dict()
                    version = raw["metadata"].get("resourceVersion") or version
                    events[event] += 1
                    handle(event, raw)
            except ApiError as error:
                if error.status.code != 410:
                    raise
                return  # never expected within a run: the bench fails loudly on its convergence wait

    async def start(self) -> None:
        lmns, caches = asyncio.Event(), asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._follow(resources.LocalModelNode, self._on_lmn, self.lmn_events, lmns)),
            asyncio.create_task(self._follow(resources.LocalModelCache, self._on_cache, self.cache_events, caches)),
        ]
        await first_of(self._tasks, [lmns, caches])

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AgentWatch:
    """One agent's view: list + watch of LocalModelNodes with `metadata.name=<node>`, as
    localmodel.node.cluster does, counting what arrives."""

    def __init__(self, client: AsyncClient, node: str) -> None:
        self.client = client
        self.node = node
        self.events: Counter[str] = Counter()
        self.foreign = 0  # events about any other object: must stay 0
        self.listed = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self, ready: asyncio.Event) -> None:
        fields = {"metadata.name": self.node}
        items, version = await list_retrying(self.client, resources.LocalModelNode, fields=fields)
        self.listed = len(items)
        ready.set()
        async for event, obj in self.client.watch(resources.LocalModelNode, fields=fields, resource_version=version):
            self.events[event] += 1
            if obj.metadata is None or obj.metadata.name != self.node:
                self.foreign += 1

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await first_of([self._task], [ready])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --- setup -------------------------------------------------------------------------------------

def group_body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup",
        "metadata": {"name": name},
        "spec": {
            "storageLimit": "1000Gi",
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1000Gi"},
                "hostPath": {"path": "/models", "type": "DirectoryOrCreate"},
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": POOL_LABEL, "operator": "In", "values": [name]}]}]}},
            },
            "persistentVolumeClaimSpec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                                          "resources": {"requests": {"storage": "1000Gi"}}},
        },
    }


def ready_condition(ready: bool) -> dict[str, Any]:
    return {"status": {"conditions": [{
        "type": "Ready", "status": "True" if ready else "False", "reason": "Bench",
        "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}


async def bounded(jobs: Iterable[Awaitable[Any]], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> None:
        async with gate:
            await job

    await asyncio.gather(*(one(j) for j in jobs))


async def ignore_exists(job: Awaitable[Any]) -> None:
    try:
        await job
    except ApiError as error:
        if error.status.code != 409:
            raise


async def create_node(client: AsyncClient, name: str, group: str) -> None:
    labels = {POOL_LABEL: group, "kubernetes.io/hostname": name}
    await ignore_exists(client.create(Node(metadata=ObjectMeta(name=name, labels=labels))))
    # a Node's status is dropped on create: Ready is set through the status subresource, as a kubelet does
    await client.patch(NodeStatus, name, ready_condition(True), patch_type=PatchType.STRATEGIC)


async def setup(plane: ControlPlane, client: AsyncClient, layout: Layout, concurrency: int) -> dict[str, float]:
    started = time.monotonic()
    for crd in sorted((REPO / "deploy" / "crds").glob("*.yaml")):
        plane.kubectl("apply", "--server-side", "-f", str(crd))
    for _ in range(300):
        if plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all",
                         check=False).returncode == 0:
            break
        await asyncio.sleep(0.2)
    for ns in (POD_NAMESPACE, JOB_NAMESPACE):
        await ignore_exists(client.create(Namespace(metadata=ObjectMeta(name=ns))))
    config = {"enabled": True, "jobNamespace": JOB_NAMESPACE, "disableVolumeManagement": False}
    await ignore_exists(client.create(ConfigMap(
        metadata=ObjectMeta(name="inferenceservice-config", namespace=POD_NAMESPACE),
        data={"localModel": json.dumps(config)})))
    for g in range(layout.groups):
        await ignore_exists(client.create(resources.LocalModelNodeGroup(group_body(layout.group_name(g)))))
    nodes_started = time.monotonic()
    await bounded((create_node(client, layout.node_name(i), layout.node_group(i)) for i in range(layout.nodes)),
                  concurrency)
    nodes_seconds = time.monotonic() - nodes_started
    for c in range(layout.caches):
        body = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
                "metadata": {"name": layout.cache_name(c)},
                "spec": {"sourceModelUri": layout.cache_uri(c), "modelSize": "1Gi",
                         "nodeGroups": [layout.cache_group(c)]}}
        await ignore_exists(client.create(resources.LocalModelCache(body)))
    return {"setup_seconds": round(time.monotonic() - started, 1), "node_creation_seconds": round(nodes_seconds, 1),
            "nodes_per_second": round(layout.nodes / nodes_seconds, 1)}


# --- the simulated agent -----------------------------------------------------------------------

def agent_status(models: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """What an agent writes once every listed model is downloaded: (status key, uri) pairs."""
    model_status: dict[str, str] = {}
    details: dict[str, Any] = {}
    for key, uri in models:
        model_status[key] = "ModelDownloaded"
        details[key] = {"storageKey": storage_key(uri), "bytesDone": GIB, "bytesTotal": GIB, "filesDone": 4,
                        "filesTotal": 4, "startTime": "2026-01-01T00:00:00Z",
                        "completionTime": "2026-01-01T00:01:00Z"}
    used = GIB * len(model_status)
    return {"status": {"modelStatus": model_status, "modelDetails": details, "modelsDownloaded": len(model_status),
                       "disk": {"capacityBytes": 2000 * GIB, "usedBytes": used, "freeBytes": 2000 * GIB - used},
                       "observedGeneration": 1}}


async def report_downloaded(client: AsyncClient, layout: Layout, node: str) -> None:
    group = layout.node_group(int(node.removeprefix("node-")))
    models = [(status_key(c), layout.cache_uri(int(c.removeprefix("model-")))) for c in sorted(layout.caches_of_group(group))]
    await client.patch(resources.LocalModelNode.Status, node, agent_status(models), patch_type=PatchType.MERGE)


# --- the run -----------------------------------------------------------------------------------

@dataclass
class Result:
    nodes: int
    caches: int
    groups: int
    setup: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    one_node_changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    agent_watch: dict[str, Any] = field(default_factory=dict)
    controller_memory_mib: dict[str, float] = field(default_factory=dict)
    load_average_start: list[float] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, plane: ControlPlane, layout: Layout, args: argparse.Namespace) -> None:
        self.plane = plane
        self.layout = layout
        self.args = args
        self.result = Result(layout.nodes, layout.caches, layout.groups)
        self.apiserver = ApiserverMetrics(plane, plane.workdir / "bench-pki")
        self.client = AsyncClient(KubeConfig.from_file(plane.kubeconfig), field_manager="bench")
        self.controller: BenchController | None = None
        self.profiler: subprocess.Popen[bytes] | None = None
        self.expected = {layout.node_name(i): frozenset(layout.caches_of_group(layout.node_group(i)))
                         for i in range(layout.nodes)}
        self.group_size = {layout.group_name(g): len(layout.nodes_of_group(layout.group_name(g)))
                           for g in range(layout.groups)}

    # -- measurement around a phase --

    def _mark(self) -> tuple[RequestCounts, RequestCounts, dict[str, float]]:
        assert self.controller is not None
        return self.apiserver.requests(), self.controller.requests(), self.controller.reconciles()

    def _record(self, before: tuple[RequestCounts, RequestCounts, dict[str, float]]) -> dict[str, Any]:
        server_after, controller_after, reconciles_after = self._mark()
        server, controller = diff(server_after, before[0]), diff(controller_after, before[1])
        return {
            "controller_reconciles": {q: int(n - before[2].get(q, 0)) for q, n in sorted(reconciles_after.items())},
            "apiserver_requests": as_table(server),
            "apiserver_request_seconds": seconds_table(server),
            "apiserver_throttled_429": int(server.get(("throttled", "429"), 0)),
            "controller_requests": as_table(controller),
            "controller_requests_total": int(sum(controller.values())),
            "controller_writes": int(sum(writes(controller).values())),
            "controller_write_detail": as_table(writes(controller)),
            "controller_lease_requests": int(sum(v for k, v in controller.items() if k[1].startswith("leases"))),
        }

    def _memory(self, label: str) -> None:
        assert self.controller is not None
        mem = memory_kib(self.controller.pid)
        self.result.controller_memory_mib[f"rss_after_{label}"] = round(mem["VmRSS"] / 1024, 1)
        # The kernel updates VmHWM lazily (at unmaps and exit, not at every fault): a later
        # VmHWM can be below an earlier VmRSS, so the peak is the highest either ever showed.
        seen = max(mem["VmHWM"], mem["VmRSS"]) / 1024
        self.result.controller_memory_mib["peak"] = round(max(seen, self.result.controller_memory_mib.get("peak", 0.0)), 1)

    # -- phases --

    def nodes_converged(self) -> bool:
        return all(self.tracker.entries.get(n) == want for n, want in self.expected.items())

    def caches_full(self) -> bool:
        for c in range(self.layout.caches):
            size = self.group_size[self.layout.cache_group(c)]
            if self.tracker.copies.get(self.layout.cache_name(c)) != {"available": size, "total": size, "failed": 0}:
                return False
        return True

    async def phase_nodes(self, clock: CpuClock) -> None:
        before_server = self.apiserver.requests()
        started = time.monotonic()
        clock.lap()
        self.controller = BenchController(self.plane.kubeconfig, self.plane.logs_dir / "controller.log",
                                          self.args.workers).start(wait=None)
        clock.pids["controller"] = self.controller.pid
        if self.args.profile:
            # py-spy (pip install py-spy; not a project dependency) samples the controller until it exits
            self.profiler = subprocess.Popen(
                [shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") or "py-spy",
                 "record", "--pid", str(self.controller.pid), "--rate", "200", "--format", "raw",
                 "--output", str(self.args.profile)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        synced = await until(self.controller.ready, "controller /readyz", self.args.timeout, interval=0.1,
                             threaded=True)
        converged = await until(self.nodes_converged, "every LocalModelNode to list its caches", self.args.timeout)
        settled = await quiet(self.controller, self.args.settle, self.args.timeout)
        cpu = clock.lap()
        phase = self._record((before_server, {}, {}))
        phase.update({
            "informers_synced_seconds": round(synced - started, 2),
            "converged_seconds": round(converged - started, 2),
            "converged_after_sync_seconds": round(converged - synced, 2),
            "quiet_seconds": round(settled - started, 2),
            "cpu_seconds": cpu,
        })
        self.result.phases["nodes"] = phase
        self._memory("nodes")

    async def phase_status(self, clock: CpuClock) -> None:
        marks = self._mark()
        clock.lap()
        started = time.monotonic()
        profile = None
        if self.args.apiserver_profile:
            profile = asyncio.create_task(asyncio.to_thread(self.apiserver.cpu_profile, 15, self.args.apiserver_profile))
        await bounded((report_downloaded(self.client, self.layout, n) for n in sorted(self.expected)),
                      self.args.concurrency)
        patched = time.monotonic()
        converged = await until(self.caches_full, "every cache to show full copies", self.args.timeout)
        settled = await quiet(self.controller, self.args.settle, self.args.timeout)  # type: ignore[arg-type]
        cpu = clock.lap()
        phase = self._record(marks)
        phase.update({
            "agent_patches_seconds": round(patched - started, 2),
            "converged_seconds": round(converged - started, 2),
            "converged_after_last_patch_seconds": round(converged - patched, 2),
            "quiet_seconds": round(settled - started, 2),
            "cpu_seconds": cpu,
        })
        self.result.phases["status"] = phase
        if profile is not None:
            await profile
        self._memory("status")

    async def one_change(self, label: str, change: Awaitable[Any], done: Callable[[], bool], caches_on_node: int
                         ) -> None:
        assert self.controller is not None
        await quiet(self.controller, self.args.settle, self.args.timeout)
        marks = self._mark()
        started = time.monotonic()
        await change
        converged = await until(done, label, self.args.timeout)
        settled = await quiet(self.controller, self.args.settle, self.args.timeout)
        record = self._record(marks)
        record["caches_on_node"] = caches_on_node
        record["converged_seconds"] = round(converged - started, 2)
        record["quiet_seconds"] = round(settled - started, 2)
        self.result.one_node_changes[label] = record

    async def phase_one_node(self) -> None:
        layout = self.layout
        leaver, sleeper = layout.node_name(1), layout.node_name(2)
        leave_group, sleep_group = layout.node_group(1), layout.node_group(2)
        leave_caches = sorted(layout.caches_of_group(leave_group))
        sleep_caches = sorted(layout.caches_of_group(sleep_group))
        size = self.group_size

        def left() -> bool:
            return not self.tracker.entries.get(leaver) and all(
                leaver not in self.tracker.node_status.get(c, {leaver: ""}) and
                self.tracker.copies.get(c, {}).get("total") == size[leave_group] - 1 for c in leave_caches)

        def rejoined() -> bool:
            return self.tracker.entries.get(leaver) == self.expected[leaver] and all(
                self.tracker.copies.get(c, {}).get("available") == size[leave_group] for c in leave_caches)

        def not_ready() -> bool:
            return all(self.tracker.node_status.get(c, {}).get(sleeper) == "NodeNotReady" for c in sleep_caches)

        def ready_again() -> bool:
            return all(self.tracker.node_status.get(c, {}).get(sleeper) == "NodeDownloaded" for c in sleep_caches)

        label_patch = {"metadata": {"labels": {POOL_LABEL: None}}}
        await self.one_change("label removed (leaves its group)",
                              self.client.patch(Node, leaver, label_patch, patch_type=PatchType.MERGE), left,
                              len(leave_caches))
        restore = {"metadata": {"labels": {POOL_LABEL: leave_group}}}
        await self.one_change("label restored (rejoins)",
                              self.client.patch(Node, leaver, restore, patch_type=PatchType.MERGE), rejoined,
                              len(leave_caches))
        await self.one_change("NotReady", self.client.patch(NodeStatus, sleeper, ready_condition(False),
                                                            patch_type=PatchType.STRATEGIC), not_ready,
                              len(sleep_caches))
        await self.one_change("Ready again", self.client.patch(NodeStatus, sleeper, ready_condition(True),
                                                               patch_type=PatchType.STRATEGIC), ready_again,
                              len(sleep_caches))

    async def run(self) -> Result:
        self.result.load_average_start = [round(x, 2) for x in os.getloadavg()]
        progress("control plane up; creating groups, nodes and caches")
        self.result.setup = await setup(self.plane, self.client, self.layout, self.args.concurrency)
        progress(f"setup done: {self.result.setup}")
        self.tracker = Tracker(self.client)
        await self.tracker.start()
        watched = self.layout.node_name(self.layout.nodes // 2 + 3 if self.layout.nodes > 8 else 0)
        agent_client = AsyncClient(KubeConfig.from_file(self.plane.kubeconfig), field_manager="bench-agent")
        agent = AgentWatch(agent_client, watched)
        await agent.start()
        clock = CpuClock(self.plane.pids)
        try:
            await self.phase_nodes(clock)
            progress("phase nodes done")
            await self.phase_status(clock)
            progress("phase status done")
            await self.phase_one_node()
            progress("one-node changes done")
            self.result.agent_watch = {
                "node": watched, "listed": agent.listed, "events": dict(agent.events),
                "events_total": sum(agent.events.values()), "foreign_events": agent.foreign,
                "unfiltered_watch_events_total": sum(self.tracker.lmn_events.values()),
                "unfiltered_watch_events": dict(self.tracker.lmn_events),
            }
            self._memory("changes")
        finally:
            await agent.stop()
            await agent_client.close()
            await self.tracker.stop()
            if self.controller is not None:
                self.controller.stop()
            if self.profiler is not None:
                self.profiler.wait(60)
            await self.client.close()
        self.result.load_average = [round(x, 2) for x in os.getloadavg()]
        return self.result


def summary(result: Result) -> str:
    nodes, status = result.phases["nodes"], result.phases["status"]
    lines = [
        f"{result.nodes} nodes, {result.groups} groups, {result.caches} caches; load average "
        f"{result.load_average_start} → {result.load_average}",
        f"setup: {result.setup}",
        f"nodes:  converged {nodes['converged_seconds']} s (informers synced at {nodes['informers_synced_seconds']} s),"
        f" quiet at {nodes['quiet_seconds']} s; controller writes {nodes['controller_writes']},"
        f" requests {nodes['controller_requests_total']}; cpu {nodes['cpu_seconds']}",
        f"status: converged {status['converged_seconds']} s (agents patched in {status['agent_patches_seconds']} s),"
        f" quiet at {status['quiet_seconds']} s; controller writes {status['controller_writes']},"
        f" requests {status['controller_requests_total']}; cpu {status['cpu_seconds']}",
    ]
    for label, change in result.one_node_changes.items():
        lines.append(f"{label}: caches on the node {change['caches_on_node']}, controller writes {change['controller_writes']} {change['controller_write_detail']}"
                     f" converged {change['converged_seconds']} s")
    for name, phase in result.phases.items():
        cpu = phase["cpu_seconds"]
        shares = {k: f"{v / (cpu['wall'] * CORES) * 100:.0f}%" for k, v in cpu.items() if k != "wall"}
        lines.append(f"{name}: share of {CORES} cores over {cpu['wall']} s: {shares}")
    lines.append(f"agent watch: {result.agent_watch}")
    lines.append(f"controller memory MiB: {result.controller_memory_mib}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--caches", type=int, default=50)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="the controller's --workers")
    parser.add_argument("--concurrency", type=int, default=32, help="parallel requests of setup and agents")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="the controller counts as done after this many seconds without requests or reconciles")
    parser.add_argument("--timeout", type=float, default=600,
                        help="give up waiting for readiness, convergence or quiet after this many seconds")
    parser.add_argument("--workdir", type=Path, default=None, help="control plane directory (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the controller with py-spy into this file (collapsed stacks)")
    parser.add_argument("--apiserver-profile", type=Path, default=None,
                        help="Go CPU profile of the apiserver during the first 15 s of the status phase")
    args = parser.parse_args(argv)
    layout = Layout(args.nodes, args.caches, args.groups)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="localmodel-scale-"))
    # no kube-controller-manager: its requests would mix into apiserver_request_total
    apiserver_args = ["--profiling=true"] if args.apiserver_profile else []
    progress(f"starting a control plane in {workdir}")
    with ControlPlane(workdir, controllers=(), apiserver_args=apiserver_args) as plane:
        result = asyncio.run(Bench(plane, layout, args).run())
        progress("stopping the control plane")
    progress("stopped")
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
