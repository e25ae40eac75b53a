"""Many real `localmodel agent` processes on one apiserver, each a "node" with its own root,
peer port, bound agent token (kubeconfig) and peer token, all asking for one model on the
local Hub through a storage-config key (type hf, the Hub's endpoint)."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType

from tests.node.agent_process import AgentProcess, metric_value
from tests.node.cluster import ClusterAgents
from tests.node.tokens import AGENT_NAMESPACE, JOBS_NAMESPACE, agent_kubeconfig
from tests.p2p.peers import HubModel, Identity
from localmodel.peers.discovery import PEER_SERVICE
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


def ensure_peer_service(admin: Client) -> None:
    """The agents' headless peer Service (deploy/agent/peer-service.yaml), without a selector:
    the agents here are processes, not Pods, so the tests publish their EndpointSlices, as the
    EndpointSlice controller does for the DaemonSet's Pods on real nodes."""
    try:
        admin.create(Service.from_dict({
            "metadata": {"name": PEER_SERVICE, "namespace": AGENT_NAMESPACE},
            "spec": {"clusterIP": "None", "ports": [{"name": "peer", "port": 8082}]}}))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


#: The apiserver refuses loopback addresses in EndpointSlices, so agents published through the
#: peer Service are reached at an address of an interface the tests add (`add_peer_address`).
PEER_TEST_ADDRESS = "10.245.0.1"
PEER_TEST_LINK = "lm-p2p0"


def add_peer_address() -> None:
    """A port-less bridge holding PEER_TEST_ADDRESS/32 (root; this kernel has no dummy driver):
    a local address, so traffic to it never leaves the host."""
    remove_peer_address()  # left by a killed run
    for command in (["ip", "link", "add", PEER_TEST_LINK, "type", "bridge"],
                    ["ip", "addr", "add", f"{PEER_TEST_ADDRESS}/32", "dev", PEER_TEST_LINK],
                    ["ip", "link", "set", PEER_TEST_LINK, "up"]):
        subprocess.run(command, check=True, capture_output=True)


def remove_peer_address() -> None:
    subprocess.run(["ip", "link", "del", PEER_TEST_LINK], check=False, capture_output=True)


def publish_endpoint(admin: Client, node: str, port: int) -> None:
    """One EndpointSlice of the peer Service for the agent of `node` (each its own port here)."""
    ensure_peer_service(admin)
    admin.create(EndpointSlice.from_dict({
        "metadata": {"name": f"{PEER_SERVICE}-{node}", "namespace": AGENT_NAMESPACE,
                     "labels": {"kubernetes.io/service-name": PEER_SERVICE,
                                "endpointslice.kubernetes.io/managed-by": "localmodel-tests"}},
        "addressType": "IPv4",
        "ports": [{"name": "peer", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [PEER_TEST_ADDRESS], "nodeName": node, "conditions": {"ready": True}}]}))


def withdraw_endpoints(admin: Client) -> None:
    for item in admin.list(EndpointSlice, namespace=AGENT_NAMESPACE,
                           labels={"kubernetes.io/service-name": PEER_SERVICE}):
        admin.delete(EndpointSlice, item.metadata.name, namespace=AGENT_NAMESPACE)


@dataclass
class PeerAgents:
    cluster: ClusterAgents
    identity: Identity
    nodes: list[PeerNode] = field(default_factory=list)
    #: Publish each agent through the peer Service's EndpointSlices (under KServe's CRDs,
    #: which prune status.peerEndpoint, that is how agents find each other).
    by_service: bool = False

    def add(self, model: HubModel, storage: str, *args: str) -> PeerNode:
        cluster = self.cluster
        node = cluster.node([{"sourceModelUri": model.uri, "modelName": "m", "storage": {"key": storage}}],
                            name=f"p2p-{uuid.uuid4().hex[:6]}")
        kubeconfig, _client = agent_kubeconfig(cluster.kube, cluster.client, node)
        token_file = cluster.tmp / f"peer-token-{node}"
        token_file.write_text(self.identity.token(node))
        port = free_port()
        # Found through the peer Service, an agent must listen where its EndpointSlice points.
        listen = ("--bind-address", "0.0.0.0") if self.by_service else ()
        agent = cluster.start_agent(
            node, "--peer-port", str(port), "--peer-advertise-address", "127.0.0.1",
            "--peer-token-file", str(token_file), "--scrub-interval", "0", *listen, *args,
            kubeconfig=kubeconfig, namespace=AGENT_NAMESPACE)
        if self.by_service:
            publish_endpoint(self.identity.admin, node, port)
        found = PeerNode(node, agent, cluster.root(node), port)
        self.nodes.append(found)
        return found

    def metric(self, name: str, labels: str = "") -> float:
        return sum(metric_value(n.agent.metrics(), name, labels) or 0.0 for n in self.nodes if n.agent.running())
