"""The full loop (issue 5): a LocalModelCache from creation to its files leaving the nodes.

    cache created → LocalModelNodes for the group's two nodes → two agent processes download the
    model from a real S3 server (rclone, SigV4 checked, credentials from a ServiceAccount secret
    in the job namespace) → copies 2/2/0 and the cache-aware node labels → an InferenceService
    defaulted onto the cache by the webhook → deleting the cache is refused by the validating
    webhook (called by the apiserver, served over HTTPS by the controller process) → the
    InferenceService goes → the cache is deleted → both folders removed, labels gone.

Run twice, each on a control plane of its own: with localmodel's CRDs, and with KServe's CRDs
(which prune every additive status field) in their place. The controller and both agents are
real `localmodel` processes using tokens of their own ServiceAccounts bound by the shipped RBAC
(the agents' tokens are bound to Pods on their nodes, as the DaemonSet's are), so the loop also
proves the shipped rules and admission policy suffice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Secret, ServiceAccount

from localmodel.api.keys import storage_key
from localmodel.controller.names import node_model_label
from localmodel.dev.controller_process import ControllerProcess
from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources
from tests.controller.harness import (
    absent,
    cache_status,
    create_group,
    create_namespace,
    create_node,
    deleted,
    lmn_models,
    node_labels,
    wait_for,
)
from tests.e2e.install import (
    CONTROLLER_ACCOUNT,
    JOB_NAMESPACE,
    NAMESPACE,
    install,
    register_webhooks,
    service_account_kubeconfig,
    start_controller,
)
from tests.node.agent_process import AgentProcess, metric_value
from tests.node.models import make_model, model_dir, tree_digests
from tests.node.tokens import agent_kubeconfig
from tests.servers.s3 import RcloneS3Server

MiB = 2**20
GROUP = "workers"
GROUP_NODES = ("worker-1", "worker-2")
OTHER_NODE = "control-plane-1"
CACHE = "llama"
DEADLINE = 180.0


@dataclass
class Loop:
    flavor: str
    plane: ControlPlane
    client: Client
    controller: ControllerProcess
    agents: dict[str, AgentProcess]
    roots: dict[str, Path]

    def logs(self) -> str:
        parts = [f"--- controller ---\n{self.controller.log_text()[-4000:]}"]
        parts += [f"--- agent {node} ---\n{agent.tail(30)}" for node, agent in self.agents.items()]
        return "\n".join(parts)


@pytest.fixture(scope="module", params=["localmodel", "kserve"])
def loop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    flavor = str(request.param)
    workdir = tmp_path_factory.mktemp(f"full-loop-{flavor}")
    with ControlPlane(workdir / "cluster") as plane:
        install(plane, flavor)
        admin = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="localmodel-e2e")
        for node in GROUP_NODES:
            create_node(admin, node, {"pool": GROUP, "kserve/localmodel": "worker"})
        create_node(admin, OTHER_NODE, {"pool": "system"})
        create_group(admin, GROUP, value=GROUP, limit="1Gi")

        token = service_account_kubeconfig(plane, admin, CONTROLLER_ACCOUNT, workdir / "controller.kubeconfig")
        controller = start_controller(plane, token, workdir / "controller")
        agents: dict[str, AgentProcess] = {}
        roots = {node: workdir / "nodes" / node for node in GROUP_NODES}
        try:
            wait_for(controller.ready, "controller ready", timeout=DEADLINE)
            assert controller.webhook_port is not None
            register_webhooks(plane, controller.webhook_port)
            for node in GROUP_NODES:
                kubeconfig, _ = agent_kubeconfig(plane, admin, node)
                agents[node] = AgentProcess(
                    ["--root", str(roots[node]), "--kubeconfig", str(kubeconfig), "--progress-interval", "0.5"],
                    workdir / f"agent-{node}.log", env={"NODE_NAME": node, "POD_NAMESPACE": NAMESPACE},
                ).start()
            yield Loop(flavor, plane, admin, controller, agents, roots)
        finally:
            for agent in agents.values():
                agent.stop()
            controller.stop()


def webhook_calls(loop: Loop, webhook: str) -> float:
    text = loop.controller.metrics()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("localmodel_controller_webhook_requests_total{") and f'webhook="{webhook}"' in line)


def wait_webhooks_active(loop: Loop) -> None:
    """The apiserver picks up webhook configurations asynchronously: dry-run creates until the
    controller's own request counters show it was called."""
    probe_cache = resources.LocalModelCache({"metadata": {"name": "probe"}, "spec": {
        "sourceModelUri": "s3://probe/model", "modelSize": "1Mi", "nodeGroups": [GROUP]}})
    probe_isvc = resources.InferenceService({"metadata": {"name": "probe", "namespace": NAMESPACE},
                                             "spec": {"predictor": {"model": {"storageUri": "s3://probe/x"}}}})
    for webhook, probe in (("localmodelcache", probe_cache), ("inferenceservice", probe_isvc)):
        def called(webhook: str = webhook, probe: object = probe) -> bool:
            before = webhook_calls(loop, webhook)
            loop.client.create(probe, dry_run=True)  # type: ignore[call-overload]
            return webhook_calls(loop, webhook) > before
        wait_for(called, f"{webhook} webhook active", timeout=DEADLINE)


def origin_model(loop: Loop, s3: RcloneS3Server) -> tuple[str, dict[str, str]]:
    """A model in the S3 server and the credentials to read it, the KServe way."""
    bucket = f"e2e-{loop.flavor}"
    digests = make_model(s3.bucket(bucket) / "llama-3", {
        "config.json": 700, "tokenizer/tokenizer.json": 300 * 1024,
        "model-00001-of-00002.safetensors": 6 * MiB, "model-00002-of-00002.safetensors": 5 * MiB + 17,
    })
    loop.client.create(Secret(
        metadata=ObjectMeta(name="s3-credentials", namespace=JOB_NAMESPACE, annotations={
            "serving.kserve.io/s3-endpoint": s3.endpoint.removeprefix("http://"),
            "serving.kserve.io/s3-usehttps": "0", "serving.kserve.io/s3-region": s3.region}),
        stringData={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
    ))
    loop.client.create(ServiceAccount(metadata=ObjectMeta(name="s3-reader", namespace=JOB_NAMESPACE),
                                      secrets=[ObjectReference(name="s3-credentials")]))
    return f"s3://{bucket}/llama-3", digests


def test_full_loop(loop: Loop, rclone_s3: RcloneS3Server) -> None:
    client = loop.client
    uri, digests = origin_model(loop, rclone_s3)
    key = storage_key(uri)
    label = node_model_label(uri)
    wait_webhooks_active(loop)

    # --- created: entries on the group's nodes only, downloaded by both agents ------------------
    client.create(resources.LocalModelCache({"metadata": {"name": CACHE}, "spec": {
        "sourceModelUri": uri, "modelSize": "64Mi", "nodeGroups": [GROUP], "serviceAccountName": "s3-reader"}}))
    for node in GROUP_NODES:
        wait_for(lambda node=node: lmn_models(client, node) == {CACHE}, f"entry on {node}", timeout=DEADLINE)
    assert absent(lambda: client.get(resources.LocalModelNode, OTHER_NODE))

    def copies_complete() -> bool:
        for agent in loop.agents.values():
            assert agent.running(), loop.logs()
        return bool(cache_status(client, CACHE).get("copies") == {"available": 2, "total": 2, "failed": 0})

    wait_for(copies_complete, "copies 2/2/0", timeout=DEADLINE)
    assert cache_status(client, CACHE)["nodeStatus"] == {n: "NodeDownloaded" for n in GROUP_NODES}
    for node in GROUP_NODES:
        assert tree_digests(model_dir(loop.roots[node], uri)) == digests, node
        assert (loop.roots[node] / "manifests" / f"{key}.json").is_file()
        wait_for(lambda node=node: node_labels(client, node).get(label) == "true", f"label on {node}")
        metrics = loop.agents[node].metrics()
        assert metric_value(metrics, "localmodel_downloads_total", 'result="succeeded"') == 1, node
    assert label not in node_labels(client, OTHER_NODE)
    assert client.get(PersistentVolume, f"{CACHE}-{GROUP}-download")
    assert client.get(PersistentVolumeClaim, f"{CACHE}-{GROUP}", namespace=JOB_NAMESPACE)

    # --- in use: the defaulting webhook ties the InferenceService to the cache ------------------
    serving = create_namespace(client, "serving")
    isvc = client.create(resources.InferenceService({"metadata": {"name": "chat", "namespace": serving}, "spec": {
        "predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": uri}}}}))
    labels = isvc["metadata"].get("labels") or {}
    assert labels.get("internal.serving.kserve.io/localmodel") == CACHE, isvc["metadata"]
    wait_for(lambda: cache_status(client, CACHE).get("inferenceServices") == [{"name": "chat", "namespace": serving}],
             "the InferenceService in the cache's status")
    wait_for(lambda: client.get(PersistentVolumeClaim, f"{CACHE}-{GROUP}", namespace=serving), "serving claim")

    with pytest.raises(ApiError) as refused:
        client.delete(resources.LocalModelCache, CACHE)
    assert f"LocalModelCache {CACHE} is being used by InferenceService chat" in refused.value.status.message
    assert not client.get(resources.LocalModelCache, CACHE)["metadata"].get("deletionTimestamp")

    # --- deleted once unused: entries, folders and labels go --------------------------------------
    client.delete(resources.InferenceService, "chat", namespace=serving)
    wait_for(lambda: absent(lambda: client.get(resources.InferenceService, "chat", namespace=serving)), "isvc gone")
    client.delete(resources.LocalModelCache, CACHE)
    wait_for(lambda: absent(lambda: client.get(resources.LocalModelCache, CACHE)), "cache gone", timeout=DEADLINE)
    for node in GROUP_NODES:
        root = loop.roots[node]
        wait_for(lambda root=root: not model_dir(root, uri).exists(), f"folder removed on {node}", timeout=DEADLINE)
        assert not (root / "manifests" / f"{key}.json").exists()
        assert lmn_models(client, node) == set()
        wait_for(lambda node=node: label not in node_labels(client, node), f"label removed from {node}")
        status = client.get(resources.LocalModelNode, node).get("status") or {}
        assert CACHE not in (status.get("modelStatus") or {})
    assert deleted(lambda: client.get(PersistentVolume, f"{CACHE}-{GROUP}-download"))
    assert deleted(lambda: client.get(PersistentVolumeClaim, f"{CACHE}-{GROUP}", namespace=JOB_NAMESPACE))

    # no call of any component was refused by RBAC or the agents' own-node policy
    for text in (loop.controller.log_text(), *(a.log_text() for a in loop.agents.values())):
        assert "forbidden" not in text.lower(), loop.logs()
