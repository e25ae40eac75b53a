"""Many real `localmodel agent` processes on one apiserver, each a "node" with its own root,
peer port, bound agent token (kubeconfig) and peer token, all asking for one model on the
local Hub through a storage-config key (type hf, the Hub's endpoint)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from tests.node.agent_process import AgentProcess, metric_value
from tests.node.cluster import ClusterAgents
from tests.node.tokens import AGENT_NAMESPACE, JOBS_NAMESPACE, agent_kubeconfig
from tests.p2p.peers import HubModel, Identity
from tests.servers.ports import free_port


def hub_storage_key(cluster: ClusterAgents, hub_url: str) -> str:
    """A key of the storage-config secret in the agents' job namespace naming the local Hub."""
    name = f"hub-{uuid.uuid4().hex[:6]}"
    value = json.dumps({"type": "hf", "endpoint": hub_url})
    try:
        cluster.client.create(Secret(metadata=ObjectMeta(name="storage-config", namespace=JOBS_NAMESPACE),
                                     stringData={name: value}))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
        cluster.client.patch(Secret, "storage-config", {"stringData": {name: value}}, namespace=JOBS_NAMESPACE,
                             patch_type=PatchType.MERGE)
    return name


@dataclass
class PeerNode:
    name: str
    agent: AgentProcess
    root: Path
    peer_port: int


@dataclass
class PeerAgents:
    cluster: ClusterAgents
    identity: Identity
    nodes: list[PeerNode] = field(default_factory=list)

    def add(self, model: HubModel, storage: str, *args: str) -> PeerNode:
        cluster = self.cluster
        node = cluster.node([{"sourceModelUri": model.uri, "modelName": "m", "storage": {"key": storage}}],
                            name=f"p2p-{uuid.uuid4().hex[:6]}")
        kubeconfig, _client = agent_kubeconfig(cluster.kube, cluster.client, node)
        token_file = cluster.tmp / f"peer-token-{node}"
        token_file.write_text(self.identity.token(node))
        port = free_port()
        agent = cluster.start_agent(
            node, "--peer-port", str(port), "--peer-advertise-address", "127.0.0.1",
            "--peer-token-file", str(token_file), "--scrub-interval", "0", *args,
            kubeconfig=kubeconfig, namespace=AGENT_NAMESPACE)
        found = PeerNode(node, agent, cluster.root(node), port)
        self.nodes.append(found)
        return found

    def metric(self, name: str, labels: str = "") -> float:
        return sum(metric_value(n.agent.metrics(), name, labels) or 0.0 for n in self.nodes if n.agent.running())
