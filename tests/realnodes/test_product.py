"""The product on real nodes, installed as a user installs it (issue 12, items 3-5).

One installation for the module: the image built from Debian packages, imported into both
nodes' containerd, `kubectl apply --server-side -k` of an overlay of deploy/ with `images:`,
`hack/webhook-certs.sh`, both nodes labelled `kserve/localmodel=worker`
(localmodel.dev.product.install_product). The models come from `rclone serve s3` on the nodes'
host address, with the credentials in a Secret of the job namespace as in KServe. Every Pod
that reads a model runs the same image and prints the sha256 of every file it finds.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from localmodel.api.keys import storage_key
from localmodel.controller.names import node_model_label
from localmodel.dev.nodes import RealNodeCluster
from localmodel.dev.product import (
    InstalledProduct,
    describe_failure,
    install_product,
    read_digests,
    reader_container,
    reader_pod,
    uninstall,
)
from tests.node.models import make_model, tree_digests
from tests.reference import kserve_reference
from tests.real_nodes import record_install
from tests.servers.s3 import RcloneS3Server

pytestmark = pytest.mark.realnodes

T = TypeVar("T")
MiB = 2**20
GROUP, GROUP_LABEL = "workers", "localmodel.test/group"
SOLO_GROUP, SOLO_LABEL = "solo", "localmodel.test/solo"
CACHE, SOLO_CACHE = "llama", "solo-llama"
DEADLINE = 240.0

def eventually(probe: Callable[[], T | None], what: str, timeout: float = DEADLINE, on_fail: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f}s\n{on_fail}"
        time.sleep(0.5)


def get(cluster: RealNodeCluster, *args: str, check: bool = True) -> dict[str, Any]:
    done = cluster.kubectl("get", "-o", "json", *args, check=check)
    loaded: dict[str, Any] = json.loads(done.stdout) if done.returncode == 0 else {}
    return loaded


def apply(cluster: RealNodeCluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


@dataclass
class Product:
    cluster: RealNodeCluster
    installed: InstalledProduct
    image: str
    uri: str
    digests: dict[str, str]
    solo_uri: str
    fresh_roots: dict[str, tuple[int, int, int]]  # node -> (uid, gid, mode) of /models before install

    def why(self) -> str:
        return describe_failure(self.cluster, self.installed)

    def cache_status(self, name: str = CACHE) -> dict[str, Any]:
        return get(self.cluster, "localmodelcache", name).get("status") or {}

    def reader_pod(self, name: str, namespace: str, **options: Any) -> dict[str, Any]:
        return reader_pod(self.image, name, namespace, **options)

    def digests_read_by(self, namespace: str, pod: str) -> dict[str, str]:
        return read_digests(self.cluster, namespace, pod)


def namespace_for(cluster: RealNodeCluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    return name


def group(name: str, label: str, limit: str = "1Gi") -> dict[str, Any]:
    """A LocalModelNodeGroup as KServe's sample has it: a local PV on the agent's /models."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup", "metadata": {"name": name},
        "spec": {
            "storageLimit": limit,
            "persistentVolumeSpec": {
                "accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem", "capacity": {"storage": limit},
                "local": {"path": "/models"}, "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": "standard",
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": label, "operator": "In", "values": ["yes"]}]}]}},
            },
            "persistentVolumeClaimSpec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem",
                                          "resources": {"requests": {"storage": limit}},
                                          "storageClassName": "standard"},
        },
    }


def cache(name: str, uri: str, group_name: str) -> dict[str, Any]:
    return {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache", "metadata": {"name": name},
            "spec": {"sourceModelUri": uri, "modelSize": "64Mi", "nodeGroups": [group_name],
                     "serviceAccountName": "s3-reader"}}


@pytest.fixture(scope="module")
def product(real_nodes: RealNodeCluster, localmodel_image: str, pod_reachable_s3: RcloneS3Server,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Product]:
    cluster = real_nodes
    # A fresh node: /models as the kubelet's DirectoryOrCreate makes it (empty, root, 0755),
    # whatever earlier tests of the session (the demo, other hostPath Pods) left there.
    fresh = {}
    for node in cluster.nodes:
        root = node.host_path("/models")
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        os.chown(root, 0, 0)
        root.chmod(0o755)
        info = root.stat()
        fresh[node.name] = (info.st_uid, info.st_gid, info.st_mode & 0o7777)
    installed = install_product(cluster, localmodel_image, workdir=tmp_path_factory.mktemp("product"))
    record_install(installed.method, installed.timings)
    s3 = pod_reachable_s3
    digests = make_model(s3.bucket("models") / "llama", {
        "config.json": 700, "tokenizer/tokenizer.json": 300 * 1024,
        "model-00001-of-00002.safetensors": 6 * MiB, "model-00002-of-00002.safetensors": 5 * MiB + 17,
    })
    make_model(s3.bucket("models") / "solo", {"weights.bin": 2 * MiB + 3}, seed=1)
    for node in cluster.nodes:
        cluster.kubectl("label", "node", node.name, f"{GROUP_LABEL}=yes", "--overwrite")
    cluster.kubectl("label", "node", "node-1", f"{SOLO_LABEL}=yes", "--overwrite")
    apply(
        cluster,
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "s3-credentials", "namespace": installed.job_namespace, "annotations": {
             "serving.kserve.io/s3-endpoint": s3.endpoint.removeprefix("http://"),
             "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": s3.region}},
         "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "s3-reader", "namespace": installed.job_namespace},
         "secrets": [{"name": "s3-credentials"}]},
        group(GROUP, GROUP_LABEL), group(SOLO_GROUP, SOLO_LABEL),
    )
    state = Product(cluster, installed, localmodel_image, "s3://models/llama", digests, "s3://models/solo", fresh)
    apply(cluster, cache(CACHE, state.uri, GROUP), cache(SOLO_CACHE, state.solo_uri, SOLO_GROUP))
    try:
        yield state
    finally:
        for name in (CACHE, SOLO_CACHE):
            cluster.kubectl("delete", "localmodelcache", name, "--ignore-not-found", "--wait=false", check=False)
        uninstall(cluster, installed)
        for node in cluster.nodes:
            cluster.kubectl("label", "node", node.name, f"{GROUP_LABEL}-", f"{SOLO_LABEL}-", "kserve/localmodel-",
                            check=False)


def wait_copies(product: Product, name: str, total: int) -> dict[str, Any]:
    want = {"available": total, "total": total, "failed": 0}
    return eventually(lambda: product.cache_status(name) if product.cache_status(name).get("copies") == want else None,
                      f"copies {total}/{total} of {name}", on_fail=product.why())


# ---- the installation ---------------------------------------------------------------------------

def test_the_controller_serves_its_webhooks_through_the_service(product: Product) -> None:
    cluster = product.cluster
    [controller] = product.installed.controller_pods(cluster)
    assert all(s["ready"] for s in controller["status"]["containerStatuses"])
    assert controller["spec"]["containers"][0]["image"] == product.image
    secret = get(cluster, "-n", "kserve", "secret/localmodel-webhook-server-cert")
    bundle = get(cluster, "validatingwebhookconfiguration/localmodelcache.serving.kserve.io")["webhooks"][0][
        "clientConfig"]["caBundle"]
    assert base64.b64decode(bundle).startswith(b"-----BEGIN CERTIFICATE-----")
    assert set(secret["data"]) >= {"tls.crt", "tls.key"}

    # The apiserver calls the webhook Service, the Pod decides: a second cache of the same URI.
    duplicate = cache("llama-again", product.uri, GROUP)
    refused = cluster.kubectl("create", "-f", "-", input=json.dumps(duplicate), check=False)
    assert refused.returncode != 0
    assert 'admission webhook "localmodelcache.kserve-webhook-server.validator" denied' in refused.stderr
    assert f"has the same StorageURI {product.uri}" in refused.stderr


def test_the_agent_runs_on_labelled_nodes_only_with_the_seed_settings(product: Product) -> None:
    cluster, installed = product.cluster, product.installed
    agents = installed.agent_pods(cluster)
    assert sorted(agents) == ["node-1", "node-2"]
    spec = agents["node-1"]["spec"]
    assert spec["nodeSelector"] == {"kserve/localmodel": "worker"}
    assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"] is True
    [manager] = spec["containers"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in manager["env"]}
    assert env["NODE_NAME"] == "spec.nodeName" and env["POD_NAMESPACE"] == "metadata.namespace"
    assert manager["securityContext"]["readOnlyRootFilesystem"] is True
    assert manager["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert manager["resources"]["limits"]["memory"] == "300Mi"
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    assert models["hostPath"]["path"] == "/models"
    assert {"name": "models", "mountPath": "/mnt/models"}.items() <= next(
        m for m in manager["volumeMounts"] if m["name"] == "models").items()

    # The running process: UID/GID 1000, no capability at all, seccomp filter, read-only root.
    pod = agents["node-1"]["metadata"]["name"]
    status = cluster.kubectl("exec", "-n", installed.namespace, pod, "-c", "manager", "--",
                             "cat", "/proc/1/status", "/proc/1/cmdline").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split() == ["1000"] * 4 and fields["Gid"].split() == ["1000"] * 4
    assert fields["CapEff"].strip() == fields["CapPrm"].strip() == fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    assert "localmodel\0agent\0--root\0/mnt/models" in status
    write = cluster.kubectl("exec", "-n", installed.namespace, pod, "-c", "manager", "--",
                            "touch", "/opt/localmodel/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    uid = agents["node-1"]["metadata"]["uid"]
    limit = cluster.node("node-1").pod_cgroup(uid, "memory") / "memory.limit_in_bytes"
    assert int(limit.read_text()) == 300 * MiB

    # Unlabel node-2: its agent goes; label it again: it comes back.
    cluster.kubectl("label", "node", "node-2", "kserve/localmodel-")
    try:
        eventually(lambda: sorted(installed.agent_pods(cluster)) == ["node-1"], "node-2's agent removed", timeout=120)
    finally:
        cluster.kubectl("label", "node", "node-2", "kserve/localmodel=worker", "--overwrite")
    cluster.kubectl("rollout", "status", "-n", installed.namespace, f"daemonset/{installed.agent}",
                    "--timeout=180s", timeout=200)
    assert sorted(installed.agent_pods(cluster)) == ["node-1", "node-2"]


def test_a_fresh_node_root_is_handed_to_the_agent_without_a_manual_step(product: Product) -> None:
    cluster = product.cluster
    wait_copies(product, CACHE, 2)  # the agent has written models/ and manifests/ there
    for node in cluster.nodes:
        assert product.fresh_roots[node.name] == (0, 0, 0o755)  # before the install (see the fixture)
        root = node.host_path("/models")
        for path in (root, root / "models", root / "manifests"):
            info = path.stat()
            assert (info.st_uid, info.st_gid) == (1000, 1000), path
        pod = product.installed.agent_pods(cluster)[node.name]
        [prepare] = pod["status"]["initContainerStatuses"]
        assert prepare["name"] == "prepare-root"
        assert prepare["state"]["terminated"]["exitCode"] == 0
        caps = pod["spec"]["initContainers"][0]["securityContext"]["capabilities"]
        assert caps == {"add": ["CHOWN"], "drop": ["ALL"]}


def test_the_agent_uses_its_projected_token_and_may_write_only_its_own_node(product: Product, tmp_path: Path) -> None:
    cluster, installed = product.cluster, product.installed
    wait_copies(product, CACHE, 2)
    pod = installed.agent_pods(cluster)["node-1"]["metadata"]["name"]
    token = cluster.kubectl("exec", "-n", installed.namespace, pod, "-c", "manager", "--",
                            "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token").stdout.strip()
    ca = tmp_path / "ca.crt"
    ca.write_bytes(cluster.control_plane.server_ca.cert_pem)
    as_agent = ("--kubeconfig=/dev/null", f"--server={cluster.control_plane.server}",
                f"--certificate-authority={ca}", f"--token={token}")
    who = json.loads(cluster.kubectl(*as_agent, "auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == "system:serviceaccount:kserve:kserve-localmodelnode-agent"
    assert who["extra"]["authentication.kubernetes.io/node-name"] == ["node-1"]
    assert who["extra"]["authentication.kubernetes.io/pod-name"] == [pod]

    # The agent's role lets it patch localmodelnodes/status of any node; the admission policy
    # narrows that to its own node, by the node name the kubelet-projected token carries.
    # (A raw PATCH as the agent sends it: kubectl would GET the status first, which the role
    # does not allow.)
    def patch_status(node: str) -> tuple[int, str]:
        request = urllib.request.Request(
            f"{cluster.control_plane.server}/apis/serving.kserve.io/v1alpha1/localmodelnodes/{node}/status"
            "?dryRun=All", method="PATCH", data=json.dumps({"status": {}}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
        try:
            with urllib.request.urlopen(request, context=ssl.create_default_context(cafile=str(ca)),
                                        timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    code, body = patch_status("node-1")
    assert code == 200, body
    code, body = patch_status("node-2")
    assert code == 403, body
    assert "the localmodel node agent may only write the LocalModelNode of its own node, not node-2" in body
    assert "ValidatingAdmissionPolicy 'localmodel-agent-own-node-only'" in body


# ---- consumption ----------------------------------------------------------------------------------

def test_a_cache_lands_the_model_on_both_real_nodes(product: Product) -> None:
    status = wait_copies(product, CACHE, 2)
    assert status["nodeStatus"] == {"node-1": "NodeDownloaded", "node-2": "NodeDownloaded"}
    key = storage_key(product.uri)
    for node in product.cluster.nodes:
        folder = node.host_path("/models") / "models" / key
        assert tree_digests(folder) == product.digests, node.name
        assert (node.host_path("/models") / "manifests" / f"{key}.json").is_file()


def test_a_pod_on_the_controllers_claim_reads_every_file(product: Product) -> None:
    cluster, installed = product.cluster, product.installed
    wait_copies(product, CACHE, 2)
    claim = f"{CACHE}-{GROUP}"
    assert get(cluster, "-n", installed.job_namespace, f"pvc/{claim}")["status"]["phase"] == "Bound"
    apply(cluster, product.reader_pod("claim-reader", installed.job_namespace, claim=claim,
                                      sub_path=f"models/{storage_key(product.uri)}"))
    try:
        assert product.digests_read_by(installed.job_namespace, "claim-reader") == product.digests
        node = get(cluster, "-n", installed.job_namespace, "pod/claim-reader")["spec"]["nodeName"]
        assert node in ("node-1", "node-2")
    finally:
        cluster.kubectl("delete", "pod", "-n", installed.job_namespace, "claim-reader", "--wait=false", check=False)


def test_a_plain_deployment_gets_the_model_from_the_pod_webhook(product: Product) -> None:
    cluster = product.cluster
    wait_copies(product, CACHE, 2)
    namespace = namespace_for(cluster, "app")
    container = reader_container(product.image, keep_running=True)
    apply(cluster, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chat", "namespace": namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "chat"}}, "template": {
            "metadata": {"labels": {"app": "chat", "localmodel.kserve.io/cache": CACHE}},
            "spec": {"terminationGracePeriodSeconds": 1, "securityContext": {"runAsUser": 1000},
                     "containers": [container]}}},
    })
    try:
        pods = eventually(lambda: get(cluster, "-n", namespace, "pods", "-l", "app=chat")["items"], "the Deployment's Pod")
        [pod] = pods
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert any(m["mountPath"] == "/mnt/models" and m.get("subPath") == f"models/{storage_key(product.uri)}"
                   for m in mounts), mounts
        assert product.digests_read_by(namespace, pod["metadata"]["name"]) == product.digests
        assert get(cluster, "-n", namespace, f"pvc/{CACHE}-{GROUP}")["status"]["phase"] == "Bound"
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def isvc_crd(product: Product) -> None:
    """KServe's InferenceService CRD (no KServe controller runs here)."""
    try:
        crd = kserve_reference() / "crds" / "serving.kserve.io_inferenceservices.yaml"
    except pytest.fail.Exception as absent:
        pytest.skip(f"KServe's InferenceService CRD is not available: {absent}")
    product.cluster.kubectl("apply", "--server-side", "-f", str(crd), timeout=120)
    product.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                            "crd/inferenceservices.serving.kserve.io", timeout=90)


def test_an_inference_service_is_defaulted_onto_the_cache_and_a_pvc_uri_pod_reads_it(
    product: Product, isvc_crd: None
) -> None:
    cluster = product.cluster
    wait_copies(product, CACHE, 2)
    namespace = namespace_for(cluster, "serving")
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": namespace},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": product.uri}}}}
    try:
        created = json.loads(cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(isvc)).stdout)
        metadata = created["metadata"]
        assert metadata["labels"]["internal.serving.kserve.io/localmodel"] == CACHE
        assert metadata["annotations"]["internal.serving.kserve.io/localmodel-sourceuri"] == product.uri
        claim = metadata["annotations"]["internal.serving.kserve.io/localmodel-pvc-name"]
        assert claim == f"{CACHE}-{GROUP}"
        # What KServe's predictor then uses: pvc://<claim>/models/<key>, the claim at
        # /mnt/models with the URI's path as sub-path.
        pvc_uri = f"pvc://{claim}/models/{storage_key(product.uri)}"
        claim_name, _, sub_path = pvc_uri.removeprefix("pvc://").partition("/")
        eventually(lambda: get(cluster, "-n", namespace, f"pvc/{claim_name}", check=False), "the serving claim")
        apply(cluster, product.reader_pod("kserve-container", namespace, claim=claim_name, sub_path=sub_path))
        assert product.digests_read_by(namespace, "kserve-container") == product.digests

        # In use: deleting the cache is refused by the webhook.
        eventually(lambda: product.cache_status().get("inferenceServices") == [{"name": "chat", "namespace": namespace}],
                   "the InferenceService in the cache's status")
        refused = cluster.kubectl("delete", "localmodelcache", CACHE, "--wait=false", check=False)
        assert refused.returncode != 0
        assert f"LocalModelCache {CACHE} is being used by InferenceService chat" in refused.stderr
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", timeout=150, check=False)


def test_the_cache_aware_label_steers_pods_to_the_node_holding_the_model(product: Product, busybox_image: str) -> None:
    cluster = product.cluster
    wait_copies(product, SOLO_CACHE, 1)
    label = node_model_label(product.solo_uri)
    eventually(lambda: get(cluster, "node/node-1")["metadata"]["labels"].get(label) == "true", "the model label on node-1")
    assert label not in get(cluster, "node/node-2")["metadata"]["labels"]
    namespace = namespace_for(cluster, "steer")
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": label, "operator": "In", "values": ["true"]}]}]}}}
    try:
        apply(cluster, *({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"steered-{i}", "namespace": namespace},
            "spec": {"terminationGracePeriodSeconds": 1, "affinity": affinity, "containers": [
                {"name": "main", "image": busybox_image, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]},
        } for i in range(4)))
        def scheduled() -> list[str] | None:
            names = [p["spec"].get("nodeName") for p in get(cluster, "-n", namespace, "pods")["items"]]
            return names if len(names) == 4 and all(names) else None

        nodes = eventually(scheduled, "the four Pods scheduled")
        assert nodes == ["node-1"] * 4
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_deleting_the_unused_cache_removes_its_files_from_the_nodes(product: Product) -> None:
    cluster = product.cluster
    wait_copies(product, CACHE, 2)
    # The InferenceService test deleted its namespace: wait until the cache is no longer used.
    eventually(lambda: not product.cache_status().get("inferenceServices"), "the cache unused")
    key = storage_key(product.uri)
    cluster.kubectl("delete", "localmodelcache", CACHE, "--timeout=180s", timeout=200)
    for node in cluster.nodes:
        folder = node.host_path("/models") / "models" / key
        eventually(lambda folder=folder: not folder.exists(), f"{folder} removed")
        assert not (node.host_path("/models") / "manifests" / f"{key}.json").exists()
    assert (cluster.node("node-1").host_path("/models") / "models" / storage_key(product.solo_uri)).is_dir()
