"""The product installed on real nodes the way a user installs it (docs/installation.md).

    install_product(cluster, image) -> InstalledProduct

On a `localmodel.dev.nodes.RealNodeCluster`:
1. the image (an OCI archive from `localmodel dev image`) is imported into every node's
   containerd, since no registry is reachable;
2. the chosen nodes are labelled `kserve/localmodel=worker` (the agent's nodeSelector);
3. `kubectl apply --server-side -k OVERLAY`, where OVERLAY is a kustomization made in a temp
   directory whose only resource is the repository's `deploy/` and whose `images:` entry points
   `localmodel` at the local image (the Pods' imagePullPolicy is IfNotPresent);
4. the webhook certificate made the self-managed way, by `hack/webhook-certs.sh` itself (openssl
   and kubectl: the Secret `localmodel-webhook-server-cert` and the webhooks' caBundle);
5. waits until the controller Deployment and the agent DaemonSet are rolled out and the
   apiserver's calls to the webhook Service are answered.

`install_chart(cluster, image, helm)` does the same with the Helm chart (`helm template` piped
to `kubectl apply --server-side`: the chart makes its certificate itself).
`reader_pod()` / `read_digests()`: a consumer Pod of the same image that prints the sha256 of
every file under /mnt/models, and its result.

Used by tests/realnodes, `localmodel dev demo --real-nodes` and the cold-start benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localmodel.errors import ControlPlaneError

if TYPE_CHECKING:
    from localmodel.dev.nodes import RealNodeCluster

#: KServe's names, as deploy/ and the chart use them.
NAMESPACE = "kserve"
JOB_NAMESPACE = "kserve-localmodel-jobs"
CONTROLLER = "kserve-localmodel-controller-manager"
AGENT = "kserve-localmodelnode-agent"
AGENT_SERVICE_ACCOUNT = "kserve-localmodelnode-agent"
WEBHOOK_SERVICE = "localmodel-webhook-server-service"
WEBHOOK_SECRET = "localmodel-webhook-server-cert"
WORKER_LABEL = ("kserve/localmodel", "worker")


def repo_root() -> Path:
    """The source checkout (editable install): deploy/, charts/ and hack/ are read from it."""
    return Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class InstalledProduct:
    """What a caller needs to use, inspect and remove the installation."""

    image: str               # the reference every node's containerd holds
    nodes: tuple[str, ...]   # labelled kserve/localmodel=worker
    manifests: Path          # the kustomize overlay, or the rendered chart (for uninstall)
    method: str              # "kustomize" or "helm"
    # deploy/ and the chart use KServe's names
    namespace: str = NAMESPACE
    job_namespace: str = JOB_NAMESPACE
    controller: str = CONTROLLER  # Deployment name
    agent: str = AGENT            # DaemonSet name
    agent_service_account: str = AGENT_SERVICE_ACCOUNT
    webhook_service: str = WEBHOOK_SERVICE
    timings: dict[str, float] = field(default_factory=dict)

    def agent_pods(self, cluster: RealNodeCluster) -> dict[str, dict[str, Any]]:
        """The agent's Pods by node name."""
        return {pod["spec"]["nodeName"]: pod for pod in _pods(cluster, self.namespace, f"control-plane={self.agent}")}

    def controller_pods(self, cluster: RealNodeCluster) -> list[dict[str, Any]]:
        return _pods(cluster, self.namespace, f"control-plane={self.controller}")


def write_overlay(directory: Path, image: str, deploy: Path | None = None) -> Path:
    """A kustomization in `directory` that installs `deploy` (default: the repository's) with
    the `localmodel` image replaced by `image` ("name:tag" or "name@sha256:...")."""
    deploy = (deploy or repo_root() / "deploy").resolve()
    # The base has already renamed the manifests' `localmodel` to its published name when an
    # overlay's transformers run, so the overlay must match that name, not `localmodel`.
    entry: dict[str, str] = {"name": published_image_name(deploy)}
    if "@" in image:
        entry["newName"], entry["digest"] = image.split("@", 1)
    else:
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag:  # no tag given (a ':' of a registry port is not a tag)
            name, tag = image, "latest"
        entry["newName"], entry["newTag"] = name, tag
    directory.mkdir(parents=True, exist_ok=True)
    # kustomize takes a directory resource by path relative to the kustomization.
    relative = os.path.relpath(deploy, directory.resolve())
    (directory / "kustomization.yaml").write_text(json.dumps({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [relative],
        "images": [entry],
    }, indent=2) + "\n")
    return directory


def published_image_name(deploy: Path) -> str:
    """The image name deploy/kustomization.yaml gives `localmodel` (its `images:` newName)."""
    import yaml

    base = yaml.safe_load((deploy / "kustomization.yaml").read_text())
    for entry in base.get("images") or []:
        if entry.get("name") == "localmodel":
            return str(entry.get("newName") or "localmodel")
    return "localmodel"


def label_workers(cluster: RealNodeCluster, nodes: Sequence[str], *, unlabel_others: bool = True) -> None:
    """`kserve/localmodel=worker` on `nodes`; removed from the other nodes when asked."""
    key, value = WORKER_LABEL
    for node in cluster.nodes:
        if node.name in nodes:
            cluster.kubectl("label", "node", node.name, f"{key}={value}", "--overwrite")
        elif unlabel_others:
            cluster.kubectl("label", "node", node.name, f"{key}-")


def import_product_image(cluster: RealNodeCluster, archive: Path) -> None:
    cluster.import_image(archive)


def install_product(
    cluster: RealNodeCluster,
    image: str,
    *,
    archive: Path | None = None,
    nodes: Sequence[str] | None = None,
    workdir: Path | None = None,
    timeout: float = 300.0,
) -> InstalledProduct:
    """Install deploy/ with kustomize as docs/installation.md says, on `nodes` (default: all);
    `archive` (the image's OCI archive) is imported first when given."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    wait_previous_removed(cluster, timeout)
    if archive is not None:
        cluster.import_image(archive)
        timings["image import"] = time.monotonic() - started
    chosen = tuple(nodes if nodes is not None else [n.name for n in cluster.nodes])
    label_workers(cluster, chosen)
    overlay = write_overlay(Path(tempfile.mkdtemp(prefix="localmodel-overlay-", dir=workdir)), image)

    step = time.monotonic()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(overlay), timeout=180)
    _wait_crds(cluster, timeout)
    timings["apply -k"] = time.monotonic() - step

    step = time.monotonic()
    make_webhook_certificate(cluster)
    timings["webhook certificate"] = time.monotonic() - step

    return _ready(cluster, InstalledProduct(image, chosen, overlay, "kustomize", timings=timings), started, timeout)


def install_chart(
    cluster: RealNodeCluster,
    image: str,
    helm: Path,
    *,
    archive: Path | None = None,
    nodes: Sequence[str] | None = None,
    workdir: Path | None = None,
    values: dict[str, Any] | None = None,
    timeout: float = 300.0,
) -> InstalledProduct:
    """The same installation from charts/localmodel: `helm template --include-crds` with the
    image values, applied server-side (what `helm install` sends, without Helm's release
    Secret); the chart generates the webhook certificate."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    wait_previous_removed(cluster, timeout)
    if archive is not None:
        cluster.import_image(archive)
        timings["image import"] = time.monotonic() - started
    chosen = tuple(nodes if nodes is not None else [n.name for n in cluster.nodes])
    label_workers(cluster, chosen)
    name, _, tag = image.rpartition(":")
    chart_values = {"image": {"repository": name, "tag": tag, "pullPolicy": "IfNotPresent"},
                    "namespace": {"create": True}, **(values or {})}
    scratch = Path(tempfile.mkdtemp(prefix="localmodel-chart-", dir=workdir))
    values_file = scratch / "values.yaml"
    values_file.write_text(json.dumps(chart_values))
    step = time.monotonic()
    rendered = subprocess.run(
        [str(helm), "template", "localmodel", str(repo_root() / "charts" / "localmodel"),
         "--namespace", NAMESPACE, "--include-crds", "--values", str(values_file)],
        capture_output=True, text=True, timeout=120, check=False)
    if rendered.returncode != 0:
        raise ControlPlaneError(f"helm template failed: {rendered.stderr.strip()}")
    manifests = scratch / "rendered.yaml"
    manifests.write_text(rendered.stdout)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifests), timeout=180)
    _wait_crds(cluster, timeout)
    timings["helm template + apply"] = time.monotonic() - step
    return _ready(cluster, InstalledProduct(image, chosen, manifests, "helm", timings=timings), started, timeout)


def _ready(cluster: RealNodeCluster, installed: InstalledProduct, started: float, timeout: float) -> InstalledProduct:
    wait_product_ready(cluster, installed, timeout=timeout)
    installed.timings["total"] = time.monotonic() - started
    return installed


def wait_previous_removed(cluster: RealNodeCluster, timeout: float) -> None:
    """An earlier installation still being deleted (its CRDs or namespaces Terminating) would
    take the new one with it: wait until it is gone, or say what holds it."""
    names = [f"crd/{kind}" for kind in (*CACHE_KINDS, "localmodelnodes.serving.kserve.io",
                                        "localmodelnodegroups.serving.kserve.io")]
    names += [f"namespace/{NAMESPACE}", f"namespace/{JOB_NAMESPACE}"]

    def terminating() -> list[str]:
        done = cluster.kubectl("get", "--ignore-not-found", "-o", "json", *names, check=False)
        document = json.loads(done.stdout or "{}") if done.returncode == 0 else {}
        items = document.get("items", [document] if "metadata" in document else [])
        return [f"{i['kind']} {i['metadata']['name']} (finalizers {i['metadata'].get('finalizers')})"
                for i in items if i["metadata"].get("deletionTimestamp")]

    if not _wait_until(lambda: not terminating(), time.monotonic() + timeout):
        raise ControlPlaneError("an earlier installation is still being deleted: " + "; ".join(terminating())
                                + "\n" + _deletion_state(cluster))


def make_webhook_certificate(cluster: RealNodeCluster) -> None:
    """hack/webhook-certs.sh, with this cluster's kubectl and kubeconfig."""
    kubectl_dir = Path(cluster.control_plane.paths.kubectl).parent
    done = subprocess.run(
        ["bash", str(repo_root() / "hack" / "webhook-certs.sh")],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig),
             "PATH": f"{kubectl_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
        capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ControlPlaneError(f"hack/webhook-certs.sh failed: {done.stderr.strip()}")


def wait_product_ready(cluster: RealNodeCluster, installed: InstalledProduct, *, timeout: float = 300.0) -> None:
    """The controller and the agent rolled out (every Pod Ready), and the validating webhook
    answering through its Service (a server-side dry run of a LocalModelCache reaches it)."""
    step = time.monotonic()
    for workload in (f"deployment/{installed.controller}", f"daemonset/{installed.agent}"):
        done = cluster.kubectl("rollout", "status", "-n", installed.namespace, workload,
                               f"--timeout={int(timeout)}s", timeout=timeout + 30, check=False)
        if done.returncode != 0:
            raise ControlPlaneError(f"{workload} did not roll out: {done.stderr.strip()}\n"
                                    + describe_failure(cluster, installed))
    agents = installed.agent_pods(cluster)
    if sorted(agents) != sorted(installed.nodes):
        raise ControlPlaneError(f"agent Pods run on {sorted(agents)}, expected {sorted(installed.nodes)}")
    installed.timings["rollout"] = time.monotonic() - step

    step = time.monotonic()
    probe = json.dumps({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache",
        "metadata": {"name": "webhook-probe"},
        "spec": {"sourceModelUri": "s3://probe/model", "modelSize": "1Mi", "nodeGroups": ["probe"]},
    })
    deadline = time.monotonic() + timeout
    while True:
        done = cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=probe, check=False)
        # The webhook answers (allowed, or refused by its own checks) once the controller
        # serves it and kube-proxy routes the Service; until then the apiserver's call fails.
        if done.returncode == 0 or "admission webhook" in done.stderr and "denied the request" in done.stderr:
            break
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"the webhooks are not answered: {done.stderr.strip()}\n"
                                    + describe_failure(cluster, installed))
        time.sleep(1)
    installed.timings["webhooks answered"] = time.monotonic() - step


def uninstall(cluster: RealNodeCluster, installed: InstalledProduct, *, timeout: float = 180.0) -> None:
    """Delete what install_product/install_chart applied (CRDs, and so every cache, included),
    and wait until it is gone, so that the next installation starts clean.

    Caches go first, while the controller and the agents still run to release their
    finalizers: a CRD whose objects keep finalizers stays Terminating, and an installation
    applied meanwhile is deleted with it. A cache that keeps its finalizer is an error
    (ControlPlaneError with the caches, the nodes' entries and the product's logs); the
    manifests are deleted all the same."""
    stuck = ""
    deadline = time.monotonic() + timeout
    for kind in CACHE_KINDS:
        cluster.kubectl("delete", kind, "--all", "--all-namespaces", "--ignore-not-found", "--wait=false",
                        check=False)
    if not _wait_until(lambda: not _cache_names(cluster), deadline):
        stuck = (f"caches kept their finalizers for {timeout:.0f}s after deletion: {', '.join(_cache_names(cluster))}\n"
                 + _deletion_state(cluster) + describe_failure(cluster, installed))
    source = ["-k", str(installed.manifests)] if installed.method == "kustomize" else ["-f", str(installed.manifests)]
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", *source, check=False)
    deadline = time.monotonic() + timeout
    gone = _wait_until(lambda: not _left_behind(cluster, installed), deadline)
    if stuck or not gone:
        raise ControlPlaneError("the product was not removed: " + (
            stuck or f"still there after {timeout:.0f}s: {', '.join(_left_behind(cluster, installed))}"))


#: The cache kinds, whose finalizers the controller must release before the CRDs can go.
CACHE_KINDS = ("localmodelcaches.serving.kserve.io", "localmodelnamespacecaches.serving.kserve.io")


def _wait_until(condition: Any, deadline: float) -> bool:
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


def _cache_names(cluster: RealNodeCluster) -> list[str]:
    """Caches of either kind still in the apiserver (a CRD already gone has none)."""
    names = []
    for kind in CACHE_KINDS:
        done = cluster.kubectl("get", kind, "--all-namespaces", "-o", "name", check=False)
        names.extend(done.stdout.split() if done.returncode == 0 else [])
    return names


def _left_behind(cluster: RealNodeCluster, installed: InstalledProduct) -> list[str]:
    """What the installation made that the apiserver still has (Terminating included): the
    CRDs, the namespaces, and every other object of its manifests."""
    source = ["-k", str(installed.manifests)] if installed.method == "kustomize" else ["-f", str(installed.manifests)]
    done = cluster.kubectl("get", "--ignore-not-found", "-o", "name", *source, check=False)
    left = done.stdout.split()
    if done.returncode != 0:  # a kind whose CRD is gone cannot be listed; the rest still can
        left.append(f"(kubectl get: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
    return left


def _deletion_state(cluster: RealNodeCluster) -> str:
    """The caches being deleted and the nodes' entries: what the controller waits for."""
    lines = []
    for kind in (*CACHE_KINDS, "localmodelnodes.serving.kserve.io"):
        done = cluster.kubectl("get", kind, "--all-namespaces", "-o", "json", check=False)
        for item in json.loads(done.stdout).get("items", []) if done.returncode == 0 else []:
            meta = item["metadata"]
            lines.append(f"{kind.split('.')[0]} {meta.get('namespace', '')}/{meta['name']}: "
                         f"deletionTimestamp={meta.get('deletionTimestamp')} finalizers={meta.get('finalizers')} "
                         f"spec={json.dumps(item.get('spec'))[:400]} status={json.dumps(item.get('status'))[:400]}")
    return "\n".join(lines) + "\n"


def describe_failure(cluster: RealNodeCluster, installed: InstalledProduct) -> str:
    """Pods, their states and the last log lines: why an installation is not ready."""
    lines = []
    for pod in _pods(cluster, installed.namespace, "app.kubernetes.io/part-of=localmodel"):
        name = pod["metadata"]["name"]
        statuses = pod.get("status", {}).get("initContainerStatuses", []) + pod.get("status", {}).get(
            "containerStatuses", [])
        states = "; ".join(f"{s['name']}: {json.dumps(s.get('state'))}" for s in statuses)
        lines.append(f"pod {name} on {pod['spec'].get('nodeName')}: {pod['status'].get('phase')} {states}")
        logs = cluster.kubectl("logs", "-n", installed.namespace, name, "--all-containers", "--tail=15", check=False)
        lines.extend("    " + line for line in (logs.stdout or logs.stderr).splitlines())
    events = cluster.kubectl("get", "events", "-n", installed.namespace, "--sort-by=.lastTimestamp", check=False)
    lines.extend(events.stdout.splitlines()[-15:])
    return "\n".join(lines)


#: Run by consumer Pods with the image's python3: one JSON line {"digests": {path: sha256}} for
#: every regular file below argv[1]; with a second argument it then sleeps (for workloads that
#: must keep running, e.g. a Deployment's).
READER_SCRIPT = (
    "import hashlib, json, pathlib, sys, time\n"
    "root = pathlib.Path(sys.argv[1])\n"
    "found = {}\n"
    "for path in sorted(root.rglob('*')):\n"
    "    if path.is_file() and not path.is_symlink():\n"
    "        digest = hashlib.sha256()\n"
    "        with open(path, 'rb') as stream:\n"
    "            for block in iter(lambda: stream.read(1 << 20), b''):\n"
    "                digest.update(block)\n"
    "        found[path.relative_to(root).as_posix()] = digest.hexdigest()\n"
    "print(json.dumps({'digests': found}), flush=True)\n"
    "if len(sys.argv) > 2:\n"
    "    time.sleep(3600)\n"
)


def reader_container(image: str, *, keep_running: bool = False) -> dict[str, Any]:
    """The reader as a container of `image` (non-root, read-only root, no capabilities)."""
    return {
        "name": "reader", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", READER_SCRIPT, "/mnt/models", *(["keep-running"] if keep_running else [])],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True, "runAsNonRoot": True},
    }


def reader_pod(image: str, name: str, namespace: str, *, claim: str | None = None, sub_path: str = "",
               **spec: Any) -> dict[str, Any]:
    """A Pod that reads /mnt/models once: `claim` mounted there read-only at `sub_path`, as
    KServe mounts a `pvc://<claim>/<sub_path>` storage URI (volume `kserve-pvc-source`)."""
    container = reader_container(image)
    volumes = []
    if claim:
        container["volumeMounts"] = [{"name": "kserve-pvc-source", "mountPath": "/mnt/models",
                                      "subPath": sub_path, "readOnly": True}]
        volumes = [{"name": "kserve-pvc-source", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
                 "containers": [container], "volumes": volumes, **spec},
    }


def read_digests(cluster: RealNodeCluster, namespace: str, pod: str, *, timeout: float = 240.0) -> dict[str, str]:
    """What a reader Pod printed: path -> sha256. ControlPlaneError if it fails or is not done
    within `timeout`, with the Pod's state."""
    deadline = time.monotonic() + timeout
    while True:
        logs = cluster.kubectl("logs", "-n", namespace, pod, check=False)
        for line in logs.stdout.splitlines():
            if line.startswith("{"):
                found: dict[str, str] = json.loads(line)["digests"]
                return found
        status = json.loads(cluster.kubectl("get", "pod", "-n", namespace, pod, "-o", "json").stdout).get("status", {})
        if status.get("phase") == "Failed" or time.monotonic() > deadline:
            raise ControlPlaneError(f"pod {namespace}/{pod} did not read the model: phase {status.get('phase')}, "
                                    f"{json.dumps(status.get('containerStatuses'))}; log: {logs.stdout[-2000:]}"
                                    f"{logs.stderr[-2000:]}; events: {_events(cluster, namespace, pod)}")
        time.sleep(0.5)


def _events(cluster: RealNodeCluster, namespace: str, name: str) -> str:
    done = cluster.kubectl("get", "events", "-n", namespace, f"--field-selector=involvedObject.name={name}",
                           "-o", "jsonpath={range .items[*]}{.reason}: {.message}; {end}", check=False)
    return done.stdout.strip()


def _pods(cluster: RealNodeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    done = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


def _wait_crds(cluster: RealNodeCluster, timeout: float) -> None:
    cluster.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s",
                    "crd/localmodelcaches.serving.kserve.io", "crd/localmodelnodes.serving.kserve.io",
                    "crd/localmodelnodegroups.serving.kserve.io",
                    "crd/localmodelnamespacecaches.serving.kserve.io", timeout=timeout + 30)
