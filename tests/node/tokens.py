"""The agent's real identity: deploy/agent RBAC and admission policy applied, and a bound token
for a Pod of the agent's ServiceAccount scheduled on a given node (TokenRequest)."""

from __future__ import annotations

import uuid
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, ServiceAccount

from localmodel.dev.controlplane import ControlPlane
from tests.node.cluster import REPO

AGENT_NAMESPACE = "kserve"
JOBS_NAMESPACE = "kserve-localmodel-jobs"
AGENT_ACCOUNT = "kserve-localmodelnode-agent"


def _ensure_namespace(client: Client, name: str) -> None:
    try:
        client.create(Namespace(metadata=ObjectMeta(name=name)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise


def install_agent_rbac(kube: ControlPlane, client: Client) -> None:
    """Apply the agent's ServiceAccount, RBAC and admission policy exactly as shipped."""
    for namespace in (AGENT_NAMESPACE, JOBS_NAMESPACE):
        _ensure_namespace(client, namespace)
    deploy = REPO / "deploy" / "agent"
    kube.kubectl("apply", "-f", str(deploy / "serviceaccount.yaml"), "-f", str(deploy / "rbac.yaml"),
                 "-f", str(deploy / "admission-policy.yaml"))


def agent_kubeconfig(kube: ControlPlane, client: Client, node: str) -> tuple[Path, Client]:
    """A kubeconfig (and client) with a token bound to an agent Pod on `node`."""
    try:
        client.create(Node(metadata=ObjectMeta(name=node)))
    except ApiError as exc:
        if exc.status.code != 409:
            raise
    pod = client.create(Pod(
        metadata=ObjectMeta(name=f"agent-{node}-{uuid.uuid4().hex[:5]}", namespace=AGENT_NAMESPACE),
        spec=PodSpec(nodeName=node, serviceAccountName=AGENT_ACCOUNT,
                     containers=[Container(name="manager", image="localmodel")]),
    ))
    request = ServiceAccount.Token(
        metadata=ObjectMeta(),
        spec=TokenRequestSpec(
            audiences=[], expirationSeconds=3600,
            boundObjectRef=BoundObjectReference(apiVersion="v1", kind="Pod", name=pod.metadata.name,
                                                uid=pod.metadata.uid),
        ),
    )
    issued = client.create(request, AGENT_ACCOUNT, namespace=AGENT_NAMESPACE)
    path = kube.kubeconfig_for_token(str(issued.status.token))
    return path, Client(KubeConfig.from_file(path), field_manager="agent-token-test")
