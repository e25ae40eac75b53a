"""`localmodel dev demo --real-nodes`: the demo with the product as real Pods.

    DIR/realnodes/        two real nodes (kubelet + containerd each) and their control plane
    DIR/origin/models/    the origin bucket, served over S3 by `rclone serve s3` on the nodes'
                          host address (10.244.0.1), which Pods reach
    DIR/logs/origin.log   the origin's log (the product's logs: `kubectl logs -n kserve ...`)

The product image is built from Debian packages (`localmodel dev image`, cached), imported into
both nodes and installed as a user installs it (localmodel.dev.product.install_product:
`kubectl apply -k` of deploy/ with `images:`, hack/webhook-certs.sh, both nodes labelled
`kserve/localmodel=worker`). Then the same sample model, credentials and LocalModelCache as the
process demo (localmodel.dev.demo), with a node group of both nodes whose volume is the agent's
`/models`. Ready means: copies 2/2, and a consumer Pod on the controller's claim has read every
file with the origin's sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client

from localmodel.api.keys import storage_key
from localmodel.dev.controlplane import free_port
from localmodel.dev.demo import (
    ACCESS_KEY,
    BUCKET,
    CACHE,
    GROUP,
    GROUP_NODES,
    MODEL_PREFIX,
    SECRET_KEY,
    SERVICE_ACCOUNT,
    DemoError,
    _rclone,
    cache_body,
    is_ready,
    read_cache_report,
    write_sample_model,
)
from localmodel.dev.nodes import HOST_ADDRESS, RealNodeCluster
from localmodel.dev.process import ManagedProcess
from localmodel.dev.product import (
    InstalledProduct,
    describe_failure,
    install_product,
    read_digests,
    reader_pod,
    uninstall,
)
from localmodel.errors import ControlPlaneError
from localmodel.report.status import CacheReport

POOL_LABEL = "localmodel.demo/pool"
CONSUMER = "sample-model-reader"


@dataclass
class RealDemo:
    """The running pieces, for the command to watch and print."""

    workdir: Path
    cluster: RealNodeCluster
    installed: InstalledProduct
    client: Client
    origin: ManagedProcess
    uri: str
    digests: dict[str, str]
    model_bytes: int
    consumer: dict[str, Any] = field(default_factory=dict)  # node, files, bytes once read

    @property
    def claim(self) -> str:
        return f"{CACHE}-{GROUP}"


def origin_digests(folder: Path) -> dict[str, str]:
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.endswith(".tmp"):
            digest = hashlib.sha256()
            with open(path, "rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            found[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return found


def node_group(limit: str) -> dict[str, Any]:
    """KServe's sample group: a local PV on /models (the agent's hostPath) of the pool's nodes."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup", "metadata": {"name": GROUP},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "capacity": {"storage": limit},
                "local": {"path": "/models"}, "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "standard",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": POOL_LABEL, "operator": "In", "values": [GROUP]}]}]}},
            },
            "persistentVolumeClaimSpec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                                          "resources": {"requests": {"storage": limit}},
                                          "storageClassName": "standard"},
        },
    }


def _wait_listening(host: str, port: int, process: ManagedProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running():
            raise DemoError(f"{process.name} exited: {process.log_tail(10)}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise DemoError(f"{process.name} did not listen on {host}:{port} within {timeout:.0f}s")


def _apply(cluster: RealNodeCluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "--field-manager=localmodel-demo", "-f", "-",
                    input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


@contextmanager
def run_real_node_demo(
    workdir: Path,
    *,
    model_mb: int,
    say: Callable[[str], None],
    cluster: RealNodeCluster | None = None,
    image_archive: Path | None = None,
    image: str | None = None,
) -> Iterator[RealDemo]:
    """Start (or use `cluster`), install the product, serve the model, create the cache, yield;
    on exit remove what was made (the nodes stop when they were started here)."""
    from localmodel.dev.image import DEFAULT_REFERENCE, build_image
    from localmodel.kube.client import sync_client

    workdir = workdir.resolve()
    with ExitStack() as stack:
        folder = workdir / "origin" / BUCKET / MODEL_PREFIX
        say(f"writing a {model_mb} MB sample model into {workdir / 'origin'}")
        model_bytes = write_sample_model(folder, model_mb)
        digests = origin_digests(folder)

        if image_archive is None:
            say("building the product image from Debian packages (cached after the first run)")
            built = build_image()
            image_archive, image = built.archive, built.reference
        image = image or DEFAULT_REFERENCE

        borrowed = cluster is not None
        if cluster is None:
            say("starting two real nodes (kubelet + containerd each; the first run builds them: minutes; "
                "one such cluster runs per machine, so this waits while another one runs)")
            cluster = RealNodeCluster(workdir / "realnodes", nodes=2, node_host_paths=("/models",))
            stack.enter_context(cluster)
        say(f"nodes {', '.join(n.name for n in cluster.nodes)} Ready; installing the product "
            f"(kubectl apply -k deploy/ with image {image})")
        try:
            installed = install_product(cluster, image, archive=image_archive, workdir=workdir)
        except ControlPlaneError as error:
            raise DemoError(f"the product did not come up: {error}") from error
        if borrowed:  # leave the caller's cluster as it was; our own nodes just stop
            stack.callback(uninstall, cluster, installed)
        say("controller and agents running as Pods: " + ", ".join(
            f"{k} {v:.1f}s" for k, v in installed.timings.items()))

        origin_port = free_port()
        origin = ManagedProcess("origin", [
            _rclone(), "serve", "s3", "--addr", f"{HOST_ADDRESS}:{origin_port}",
            "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", os.devnull,
            "--log-level", "ERROR", str(workdir / "origin"),
        ], workdir / "logs" / "origin.log")
        origin.start()
        stack.callback(origin.stop, 5.0)
        _wait_listening(HOST_ADDRESS, origin_port, origin)
        say(f"origin: S3 at http://{HOST_ADDRESS}:{origin_port} (rclone serve s3), bucket {BUCKET!r}")

        for node in cluster.nodes:
            cluster.kubectl("label", "node", node.name, f"{POOL_LABEL}={GROUP}", "--overwrite")
        limit = f"{max(1, 4 * model_bytes // 2**30 + 1)}Gi"
        _apply(
            cluster,
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "demo-s3-credentials", "namespace": installed.job_namespace, "annotations": {
                 "serving.kserve.io/s3-endpoint": f"{HOST_ADDRESS}:{origin_port}",
                 "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": "us-east-1"}},
             "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": SERVICE_ACCOUNT, "namespace": installed.job_namespace},
             "secrets": [{"name": "demo-s3-credentials"}]},
            node_group(limit),
        )
        _apply(cluster, cache_body(model_bytes))
        uri = cache_body(model_bytes)["spec"]["sourceModelUri"]
        say(f"created LocalModelCache {CACHE!r} for {uri} on group {GROUP!r} "
            f"({', '.join(n.name for n in cluster.nodes)})")
        client = sync_client(str(cluster.kubeconfig), field_manager="localmodel-demo")
        yield RealDemo(workdir, cluster, installed, client, origin, uri, digests, model_bytes)


def wait_real_demo_ready(demo: RealDemo, *, timeout: float,
                         on_report: Callable[[CacheReport | None], None]) -> CacheReport:
    """Copies 2/2, then a consumer Pod on the controller's claim reads every file with the
    origin's checksums. DemoError with the reason otherwise."""
    deadline = time.monotonic() + timeout
    report: CacheReport | None = None
    while not is_ready(report):
        if not demo.origin.running():
            raise DemoError(f"the origin exited: {demo.origin.log_tail(10)}")
        if time.monotonic() > deadline:
            errors = [f"{n.node}: {n.reason}: {n.message}" for n in (report.nodes if report else ()) if n.reason]
            raise DemoError(f"copies did not reach {len(GROUP_NODES)}/{len(GROUP_NODES)} within {timeout:.0f}s"
                            + (": " + "; ".join(errors) if errors else "") + "\n"
                            + describe_failure(demo.cluster, demo.installed))
        try:
            report = read_cache_report(demo.client)
        except ApiError as exc:
            if exc.status.code not in (429, 500, 503):
                raise
        on_report(report)
        if not is_ready(report):
            time.sleep(0.5)
    assert report is not None

    namespace = demo.installed.job_namespace
    pod = reader_pod(demo.installed.image, CONSUMER, namespace, claim=demo.claim,
                     sub_path=f"models/{storage_key(demo.uri)}")
    demo.cluster.kubectl("delete", "pod", "-n", namespace, CONSUMER, "--ignore-not-found", "--wait=true",
                         check=False)
    demo.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        read = read_digests(demo.cluster, namespace, CONSUMER, timeout=max(30.0, deadline - time.monotonic()))
    except ControlPlaneError as error:
        raise DemoError(f"the consumer Pod could not read the model: {error}") from error
    if read != demo.digests:
        wrong = sorted(p for p in set(read) | set(demo.digests) if read.get(p) != demo.digests.get(p))
        raise DemoError(f"the consumer Pod read different files than the origin holds: {', '.join(wrong)}")
    node = json.loads(demo.cluster.kubectl("get", "pod", "-n", namespace, CONSUMER, "-o", "json").stdout)["spec"][
        "nodeName"]
    demo.consumer = {"pod": f"{namespace}/{CONSUMER}", "node": node, "files": len(read), "bytes": demo.model_bytes}
    return report
