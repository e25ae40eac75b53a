"""Least privilege in the API, with real tokens: deploy/agent (RBAC and the admission policy) and
deploy/controller (RBAC) applied as shipped, tokens from TokenRequest.

1. The agent's token, bound to its Pod on node n1, is refused (403) everything beyond n1's own
   LocalModelNode status, Events, one ConfigMap and read access to credentials in jobNamespace:
   n2's LocalModelNode (status, spec, deletion), any spec, secrets elsewhere, caches, groups.
2. The controller runs as a process with its own ServiceAccount's token, next to two agents
   running with theirs, through a whole cache lifecycle: cache created, volumes and node entries
   made, models downloaded on both nodes, copies 2/2, a consumer's serving volume, consumer gone,
   cache deleted. The apiserver's audit log shows every request each identity made: none was
   refused, and the rules the controller was granted but did not need are listed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount
from lightkube.types import PatchType

from localmodel.dev.controller_process import ControllerProcess
from localmodel.kube import resources
from tests.faults import figures
from tests.faults.conftest import AUDITED_USERS, FaultPlane
from tests.faults.helpers import MiB, entry, model_dir, secret
from tests.faults.observe import file_digests
from tests.faults.processes import CacheObjects
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents
from tests.node.tokens import AGENT_ACCOUNT, AGENT_NAMESPACE, JOBS_NAMESPACE, agent_kubeconfig, install_agent_rbac
from tests.reference import REPO, kserve_reference
from tests.servers.hf import LocalHub

CONTROLLER_ACCOUNT = "kserve-localmodel-controller-manager"
AGENT_USER, CONTROLLER_USER = AUDITED_USERS


def ensure(client: Client, obj: Any) -> None:
    try:
        client.create(obj)
    except ApiError as exc:
        if exc.status.code != 409:
            raise
        client.replace(obj)


@pytest.fixture(scope="module")
def shipped_rbac(fault_plane: FaultPlane, fault_client: Client) -> FaultPlane:
    install_agent_rbac(fault_plane, fault_client)
    deploy = REPO / "deploy" / "controller"
    fault_plane.kubectl("apply", "-f", str(deploy / "serviceaccount.yaml"), "-f", str(deploy / "rbac.yaml"))
    fault_plane.kubectl("apply", "--server-side", "-f",
                        str(kserve_reference() / "crds" / "serving.kserve.io_inferenceservices.yaml"))
    fault_plane.kubectl("wait", "--for=condition=Established", "--timeout=120s",
                        "crd/inferenceservices.serving.kserve.io")
    return fault_plane


def token_for(client: Client, kube: FaultPlane, account: str, *, node: str | None = None) -> Client:
    """A client with a TokenRequest token of `account` in kserve, bound to a Pod on `node`
    when given (as the kubelet gets it), unbound otherwise."""
    bound = None
    if node is not None:
        pod = client.create(Pod(
            metadata=ObjectMeta(name=f"{account[:40]}-{uuid.uuid4().hex[:5]}", namespace=AGENT_NAMESPACE),
            spec=PodSpec(nodeName=node, serviceAccountName=account, containers=[Container(name="m", image="x")])))
        bound = BoundObjectReference(apiVersion="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid)
    issued = client.create(ServiceAccount.Token(metadata=ObjectMeta(), spec=TokenRequestSpec(
        audiences=[], expirationSeconds=3600, boundObjectRef=bound)), account, namespace=AGENT_NAMESPACE)
    path = kube.kubeconfig_for_token(str(issued.status.token))
    return Client(KubeConfig.from_file(path), field_manager="rbac-test")


def refused(action: Callable[[], Any]) -> int:
    try:
        action()
    except ApiError as exc:
        return int(exc.status.code)
    return 200


def test_an_agent_token_bound_to_n1_can_touch_nothing_but_n1s_status(
    shipped_rbac: FaultPlane, agents: ClusterAgents
) -> None:
    client = agents.client
    n1, n2 = agents.node([]), agents.node([])
    for node in (n1, n2):
        ensure(client, Node(metadata=ObjectMeta(name=node)))
    _path, mine = agent_kubeconfig(shipped_rbac, client, n1)
    unbound = token_for(client, shipped_rbac, AGENT_ACCOUNT)
    cache = f"rbac-{uuid.uuid4().hex[:6]}"
    client.create(resources.LocalModelCache({"metadata": {"name": cache}, "spec": {
        "sourceModelUri": "s3://b/m", "modelSize": "1Gi", "nodeGroups": ["g"]}}))
    ensure(client, secret(JOBS_NAMESPACE, "rbac-probe", {"k": "v"}))
    ensure(client, secret(AGENT_NAMESPACE, "rbac-probe", {"k": "v"}))
    status = {"status": {"modelStatus": {"m": "ModelDownloaded"}}}
    merge = PatchType.MERGE
    try:
        # The admission policy takes a moment to be enforced after it is created.
        wait_until(lambda: refused(lambda: mine.patch(resources.LocalModelNode.Status, n2, status,
                                                      patch_type=merge)) == 403,
                   "the admission policy to refuse n1's token writing n2")
        attempts: dict[str, Callable[[], Any]] = {
            "write n2's status": lambda: mine.patch(resources.LocalModelNode.Status, n2, status, patch_type=merge),
            "write n2's spec": lambda: mine.patch(resources.LocalModelNode, n2,
                                                  {"spec": {"localModels": [entry("s3://b/x", "x")]}},
                                                  patch_type=merge),
            "delete n2's LocalModelNode": lambda: mine.delete(resources.LocalModelNode, n2),
            "write its own spec": lambda: mine.patch(resources.LocalModelNode, n1,
                                                     {"spec": {"localModels": [entry("s3://b/x", "x")]}},
                                                     patch_type=merge),
            "create a LocalModelNode": lambda: mine.create(resources.LocalModelNode(
                {"metadata": {"name": f"forged-{uuid.uuid4().hex[:5]}"}, "spec": {"localModels": []}})),
            "read a secret in default": lambda: mine.get(Secret, "rbac-probe", namespace="default"),
            "read a secret in its own namespace": lambda: mine.get(Secret, "rbac-probe", namespace=AGENT_NAMESPACE),
            "list secrets in jobNamespace": lambda: list(mine.list(Secret, namespace=JOBS_NAMESPACE)),
            "list secrets everywhere": lambda: list(mine.list(Secret, namespace="*")),
            "write a secret in jobNamespace": lambda: mine.create(secret(JOBS_NAMESPACE, "forged", {"k": "v"})),
            "create a LocalModelCache": lambda: mine.create(resources.LocalModelCache({
                "metadata": {"name": f"forged-{uuid.uuid4().hex[:5]}"},
                "spec": {"sourceModelUri": "s3://b/y", "modelSize": "1Gi", "nodeGroups": ["g"]}})),
            "modify a LocalModelCache": lambda: mine.patch(resources.LocalModelCache, cache,
                                                           {"spec": {"modelSize": "2Gi"}}, patch_type=merge),
            "write a cache's status": lambda: mine.patch(resources.LocalModelCache.Status, cache,
                                                         {"status": {"copies": {"total": 9}}}, patch_type=merge),
            "delete a LocalModelCache": lambda: mine.delete(resources.LocalModelCache, cache),
            "create a LocalModelNamespaceCache": lambda: mine.create(resources.LocalModelNamespaceCache({
                "metadata": {"name": "forged", "namespace": "default"},
                "spec": {"sourceModelUri": "s3://b/z", "modelSize": "1Gi", "nodeGroups": ["g"]}})),
            "modify a node group": lambda: mine.patch(resources.LocalModelNodeGroup, "any", {"spec": {}},
                                                      patch_type=merge),
            "read another ConfigMap": lambda: mine.get(ConfigMap, "kube-root-ca.crt", namespace=AGENT_NAMESPACE),
            "list Pods": lambda: list(mine.list(Pod, namespace="*")),
            "label a Node": lambda: mine.patch(Node, n1, {"metadata": {"labels": {"x": "y"}}}, patch_type=merge),
            "unbound token: write n1's status": lambda: unbound.patch(resources.LocalModelNode.Status, n1, status,
                                                                      patch_type=merge),
        }
        codes = {what: refused(action) for what, action in attempts.items()}
        assert {what: code for what, code in codes.items() if code != 403} == {}
        # What it needs is allowed: its own status, and credentials in jobNamespace.
        mine.patch(resources.LocalModelNode.Status, n1, status, patch_type=merge)
        assert mine.get(Secret, "rbac-probe", namespace=JOBS_NAMESPACE).metadata.name == "rbac-probe"
    finally:
        client.delete(resources.LocalModelCache, cache)
    figures.record("rbac", "agent token (bound to n1): attempts refused with 403",
                   f"{len(attempts)} of {len(attempts)}: " + "; ".join(attempts))


# --- the controller's own token through a cache lifecycle -------------------------------------------


def audit(plane: FaultPlane, user: str) -> list[dict[str, Any]]:
    events = []
    for line in plane.audit_log.read_text().splitlines():
        record = json.loads(line)
        if record.get("user", {}).get("username") == user and record.get("stage") == "ResponseComplete":
            events.append(record)
    return events


def used_rules(events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of every request."""
    used = set()
    for event in events:
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "")
        if ref.get("subresource"):
            resource = f"{resource}/{ref['subresource']}"
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used


def granted_rules() -> list[tuple[str, str, str]]:
    import yaml

    granted = []
    for document in yaml.safe_load_all((REPO / "deploy" / "controller" / "rbac.yaml").read_text()):
        if document["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in document["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        granted.append((group, resource, verb))
    return granted


@pytest.fixture
def lifecycle_namespaces(agents: ClusterAgents) -> Iterator[None]:
    client = agents.client
    for name in (AGENT_NAMESPACE, JOBS_NAMESPACE):
        try:
            client.create(Namespace(metadata=ObjectMeta(name=name)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
    yield


def test_the_controller_and_the_agents_need_nothing_beyond_their_shipped_rules(
    shipped_rbac: FaultPlane, agents: ClusterAgents, hf_hub: LocalHub, lifecycle_namespaces: None
) -> None:
    client = agents.client
    tag = uuid.uuid4().hex[:6]
    audit_start = len(shipped_rbac.audit_log.read_text().splitlines())
    # The installation's configuration, where the shipped RBAC expects it.
    ensure(client, ConfigMap(metadata=ObjectMeta(name="inferenceservice-config", namespace=AGENT_NAMESPACE),
                             data={"localModel": json.dumps({"enabled": True, "jobNamespace": JOBS_NAMESPACE,
                                                             "reconcilationFrequencyInSecs": 1})}))
    ensure(client, secret(JOBS_NAMESPACE, "storage-config",
                          {"hub": json.dumps({"type": "hf", "endpoint": hf_hub.url})}))
    files = {"config.json": b"{}", "model.safetensors": bytes(MiB)}
    hf_hub.add_commit(f"rbac-{tag}/model", files)
    objects = CacheObjects(client)
    group = objects.group(f"rbac-{tag}")
    nodes = [objects.node(f"rbac-{tag}-n{i}", group) for i in (1, 2)]
    agents.nodes.extend(nodes)

    controller_token = token_for(client, shipped_rbac, CONTROLLER_ACCOUNT, node=nodes[0])
    controller_kubeconfig = shipped_rbac.kubeconfig_for_token(controller_token.config.user.token)  # type: ignore[union-attr]
    controller = ControllerProcess(controller_kubeconfig, AGENT_NAMESPACE, agents.tmp / "controller.log",
                                   identity=f"controller-{AGENT_NAMESPACE}").start(wait=None)
    agent_processes = []
    for node in nodes:
        path, _ = agent_kubeconfig(shipped_rbac, client, node)
        agent_processes.append(agents.start_agent(node, kubeconfig=path, namespace=AGENT_NAMESPACE))
    consumer_namespace = agents.namespace("consumer")
    cache = f"rbac-{tag}"
    try:
        objects.cache(cache, f"hf://rbac-{tag}/model", [group], storage={"key": "hub"})
        wait_until(lambda: objects.copies(cache) == {"available": 2, "total": 2, "failed": 0},
                   "the model on both nodes, copies 2/2 in the cache's status")
        for node in nodes:
            assert file_digests(model_dir(agents.root(node), f"hf://rbac-{tag}/model")) == file_digests_of(files)
        # A consumer: its namespace gets a serving volume, which goes when the consumer goes.
        client.create(resources.InferenceService({
            "metadata": {"name": "consumer", "namespace": consumer_namespace,
                         "labels": {"internal.serving.kserve.io/localmodel": cache}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "x"},
                                             "storageUri": f"hf://rbac-{tag}/model"}}}}))
        from lightkube.resources.core_v1 import PersistentVolumeClaim

        wait_until(lambda: refused(lambda: client.get(PersistentVolumeClaim, f"{cache}-{group}",
                                                      namespace=consumer_namespace)) == 200,
                   "the consumer's serving volume")
        client.delete(resources.InferenceService, "consumer", namespace=consumer_namespace)
        wait_until(lambda: refused(lambda: client.get(PersistentVolumeClaim, f"{cache}-{group}",
                                                      namespace=consumer_namespace)) in (404, 200)
                   and "consumer" not in json.dumps(objects.cache_status(cache)), "the consumer forgotten")
        client.delete(resources.LocalModelCache, cache)
        wait_until(lambda: refused(lambda: client.get(resources.LocalModelCache, cache)) == 404,
                   "the cache deleted through its finalizer")
        for node in nodes:
            wait_until(lambda node=node: not (agents.get(node)["spec"].get("localModels") or []),
                       f"{node}'s entry removed")
            wait_until(lambda node=node: not model_dir(agents.root(node), f"hf://rbac-{tag}/model").exists(),
                       f"{node}'s copy deleted")
    finally:
        controller.stop()
        objects.close()

    lines = shipped_rbac.audit_log.read_text().splitlines()[audit_start:]
    shipped_rbac.audit_log.with_suffix(".lifecycle.log").write_text("\n".join(lines) + "\n")
    records = [json.loads(line) for line in lines]
    by_user = {user: [r for r in records if r.get("user", {}).get("username") == user
                      and r.get("stage") == "ResponseComplete"] for user in AUDITED_USERS}
    for user, events in by_user.items():
        denied = [(e["verb"], e.get("objectRef"), e["responseStatus"].get("code")) for e in events
                  if e.get("responseStatus", {}).get("code") == 403]
        assert events, f"no request of {user} in the audit log"
        assert denied == [], (user, denied)
    assert "Forbidden" not in controller.log_text() and " 403" not in controller.log_text()
    for agent in agent_processes:
        assert "Forbidden" not in agent.log_text()

    used = used_rules(by_user[CONTROLLER_USER])
    granted = granted_rules()
    unused = sorted({rule for rule in granted if not any(
        rule[0] == group and rule[1] == resource and rule[2] == verb for group, resource, verb in used)})
    figures.record("rbac", "controller requests in the lifecycle (all allowed)", len(by_user[CONTROLLER_USER]))
    figures.record("rbac", "agent requests in the lifecycle (all allowed)", len(by_user[AGENT_USER]))
    figures.record("rbac", "controller rules used", "; ".join(f"{g or 'core'}/{r} {v}" for g, r, v in sorted(used)))
    figures.record("rbac", "controller rules granted but unused in this lifecycle",
                   "; ".join(f"{g or 'core'}/{r} {v}" for g, r, v in unused))
    figures.record("rbac", "agent rules used", "; ".join(
        f"{g or 'core'}/{r} {v}" for g, r, v in sorted(used_rules(by_user[AGENT_USER]))))


def file_digests_of(files: dict[str, bytes]) -> dict[str, str]:
    import hashlib

    return {path: hashlib.sha256(data).hexdigest() for path, data in files.items()}
