"""Helpers for agent tests on the real apiserver: CRD flavours, per-test namespaces and
LocalModelNodes, agents started as local processes, status and Event reads.

Both CRD flavours are exercised: localmodel's own (which keep the additive status fields) and
KServe's (which prune them). Switching flavours is a `kubectl apply` of the other CRD files over
the same names, so objects of other tests survive; localmodel's CRDs are put back afterwards.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Node
from lightkube.types import PatchType

from localmodel.dev.controlplane import ControlPlane
from localmodel.kube import resources
from tests.controller.harness import RawEvent
from tests.node.agent_process import AgentProcess, wait_until
from tests.reference import kserve_reference

REPO = Path(__file__).resolve().parents[2]
OUR_CRDS = REPO / "deploy" / "crds"
CRD_NAMES = [
    "localmodelcaches.serving.kserve.io",
    "localmodelnamespacecaches.serving.kserve.io",
    "localmodelnodegroups.serving.kserve.io",
    "localmodelnodes.serving.kserve.io",
]
FAST = ["--progress-interval", "0.3", "--retry-initial", "1", "--retry-max", "2"]
#: Most agent tests serve models from local folders, which a cluster agent refuses by default.
LOCAL = ["--allow-local-sources"]


def crd_files(flavor: str) -> list[Path]:
    folder = OUR_CRDS if flavor == "localmodel" else kserve_reference() / "crds"
    return [folder / f"serving.kserve.io_{name.split('.')[0]}.yaml" for name in CRD_NAMES]


def install_crds(kube: ControlPlane, flavor: str) -> None:
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager", "localmodel-tests"]
    for path in crd_files(flavor):
        args += ["-f", str(path)]
    kube.kubectl(*args)
    kube.kubectl("wait", "--for=condition=Established", "--timeout=120s", *[f"crd/{n}" for n in CRD_NAMES])
    wait_for_status_schema(kube, flavor)


def wait_for_status_schema(kube: ControlPlane, flavor: str) -> None:
    """Until the apiserver prunes LocalModelNode status as `flavor`'s schema says.

    Over CRDs of the same names `Established` is already true: the apiserver swaps the schema
    it serves a moment after the update, and an agent whose first status write still met the
    old one would go on writing as under the other flavour (seen: status without peerEndpoint
    right after the switch back to localmodel's CRDs). A probe object's status tells."""
    name = unique("crd-probe")
    kube.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
        "metadata": {"name": name}, "spec": {"localModels": []}}))
    try:
        def served() -> bool:
            kube.kubectl("patch", "localmodelnode", name, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"modelsDownloaded": 1}}))
            raw = kube.kubectl("get", "localmodelnode", name, "-o", "json").stdout
            kept = "modelsDownloaded" in (json.loads(raw).get("status") or {})
            return kept == (flavor == "localmodel")
        wait_until(served, f"the apiserver serving the {flavor} LocalModelNode schema", timeout=60)
    finally:
        kube.kubectl("delete", "localmodelnode", name, "--wait=false", check=False)


def installed_flavor(kube: ControlPlane) -> str:
    """Which CRDs are installed now: ours carry status.modelDetails in their schema."""
    raw = kube.kubectl("get", "crd", "localmodelnodes.serving.kserve.io", "-o", "json").stdout
    schema = json.loads(raw)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return "localmodel" if "modelDetails" in schema["properties"]["status"]["properties"] else "kserve"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class ClusterAgents:
    """Per-test objects on the shared apiserver, and the agents that serve them."""

    def __init__(self, kube: ControlPlane, client: Client, tmp: Path, flavor: str) -> None:
        self.kube = kube
        self.client = client
        self.tmp = tmp
        self.flavor = flavor
        self.config_namespace = self.namespace("cfg")
        self.job_namespace = self.namespace("jobs")
        self.write_config(self.config_namespace, self.job_namespace)
        self.nodes: list[str] = []
        self.agents: list[AgentProcess] = []
        #: Start agents with --allow-local-sources (the fault suite turns it off).
        self.allow_local_sources = True
        self._namespaces: list[str] = [self.config_namespace, self.job_namespace]

    @property
    def pruned(self) -> bool:
        return self.flavor == "kserve"

    def namespace(self, prefix: str) -> str:
        name = unique(prefix)
        self.client.create(Namespace(metadata=ObjectMeta(name=name)))
        return name

    def write_config(self, namespace: str, job_namespace: str, resync: int = 1) -> None:
        local_model = {"enabled": True, "jobNamespace": job_namespace, "reconcilationFrequencyInSecs": resync}
        body = ConfigMap(metadata=ObjectMeta(name="inferenceservice-config", namespace=namespace),
                         data={"localModel": json.dumps(local_model)})
        try:
            self.client.create(body)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
            self.client.replace(body)

    # --- LocalModelNodes ------------------------------------------------------------------------

    def node(self, entries: list[dict[str, Any]], name: str | None = None) -> str:
        """A Node and its LocalModelNode (a controller deletes LocalModelNodes of missing Nodes)."""
        name = name or unique("node")
        try:
            self.client.create(Node(metadata=ObjectMeta(name=name)))
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        self.client.create(resources.LocalModelNode.from_dict({
            "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
            "metadata": {"name": name}, "spec": {"localModels": entries},
        }))
        self.nodes.append(name)
        return name

    def set_entries(self, node: str, entries: list[dict[str, Any]]) -> None:
        self.client.patch(resources.LocalModelNode, node, {"spec": {"localModels": entries}},
                          patch_type=PatchType.MERGE)

    def get(self, node: str) -> dict[str, Any]:
        return dict(self.client.get(resources.LocalModelNode, node).to_dict())

    def status(self, node: str) -> dict[str, Any]:
        return dict(self.get(node).get("status") or {})

    def phase(self, node: str, key: str) -> str | None:
        return (self.status(node).get("modelStatus") or {}).get(key)

    def detail(self, node: str, key: str) -> dict[str, Any]:
        return dict((self.status(node).get("modelDetails") or {}).get(key) or {})

    def wait_phase(self, node: str, key: str, phase: str, agent: AgentProcess) -> dict[str, Any]:
        wait_until(lambda: self.phase(node, key) == phase, f"{node} {key} to be {phase}", agent=agent)
        return self.status(node)

    def events(self, node: str) -> list[dict[str, Any]]:
        # as plain dicts: the typed model refuses the null eventTime of other components' Events
        found = []
        for event in self.client.list(RawEvent, namespace="default"):
            regarding = event.get("regarding") or {}
            if regarding.get("name") == node:
                found.append({"reason": event.get("reason"), "type": event.get("type"), "note": event.get("note"),
                              "kind": regarding.get("kind")})
        return found

    # --- agents -------------------------------------------------------------------------------

    def root(self, node: str) -> Path:
        return self.tmp / f"root-{node}"

    def start_agent(self, node: str, *args: str, kubeconfig: Path | None = None,
                    namespace: str | None = None, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(
            ["--root", str(self.root(node)), "--kubeconfig", str(kubeconfig or self.kube.kubeconfig),
             *FAST, *(LOCAL if self.allow_local_sources else []), *args],
            self.tmp / f"agent-{node}-{len(self.agents)}.log",
            env={"NODE_NAME": node, "POD_NAMESPACE": namespace or self.config_namespace, **(env or {})},
        ).start()
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        for node in self.nodes:
            for kind in (resources.LocalModelNode, Node):
                try:
                    self.client.delete(kind, node)
                except ApiError:
                    pass
        for namespace in self._namespaces:
            try:
                self.client.delete(Namespace, namespace)
            except ApiError:
                pass
