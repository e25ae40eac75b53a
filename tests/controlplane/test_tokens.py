"""ServiceAccount TokenRequest issues bound tokens the apiserver itself validates.

Node agents authenticate with a token bound to their Pod; the apiserver adds the Pod's node to the
token's identity (userInfo.extra), which is what per-node authorization checks rely on. Node and
Pod are plain objects here: no kubelet runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec, TokenReviewSpec
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.authentication_v1 import SelfSubjectReview, TokenReview
from lightkube.resources.core_v1 import Node, Pod, ServiceAccount

from localmodel.dev.controlplane import ControlPlane

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True)
class BoundPod:
    namespace: str
    node: str
    pod: Pod
    service_account: str


@pytest.fixture
def bound_pod(kube_client: Client, namespace: str) -> Iterator[BoundPod]:
    node = f"n1-{uuid.uuid4().hex[:6]}"
    kube_client.create(Node(metadata=ObjectMeta(name=node)))
    kube_client.create(ServiceAccount(metadata=ObjectMeta(name="agent", namespace=namespace)))
    pod = kube_client.create(
        Pod(
            metadata=ObjectMeta(name="agent-pod", namespace=namespace),
            spec=PodSpec(nodeName=node, serviceAccountName="agent", containers=[Container(name="agent", image="agent")]),
        )
    )
    yield BoundPod(namespace, node, pod, "agent")
    kube_client.delete(Node, node)


def _request_token(client: Client, bound: BoundPod) -> str:
    request = ServiceAccount.Token(
        metadata=ObjectMeta(),
        spec=TokenRequestSpec(
            audiences=[],  # empty = the apiserver's own audience
            expirationSeconds=3600,
            boundObjectRef=BoundObjectReference(
                apiVersion="v1", kind="Pod", name=bound.pod.metadata.name, uid=bound.pod.metadata.uid
            ),
        )
    )
    issued = client.create(request, bound.service_account, namespace=bound.namespace)
    return str(issued.status.token)


def _review(client: Client, token: str) -> TokenReview:
    return client.create(TokenReview(spec=TokenReviewSpec(token=token)))


def test_token_bound_to_pod_carries_its_node_name(kube_client: Client, bound_pod: BoundPod) -> None:
    token = _request_token(kube_client, bound_pod)
    review = _review(kube_client, token)
    assert review.status.authenticated is True
    user = review.status.user
    assert user.username == f"system:serviceaccount:{bound_pod.namespace}:agent"
    assert user.extra[NODE_NAME_EXTRA] == [bound_pod.node]
    assert user.extra[POD_NAME_EXTRA] == ["agent-pod"]


def test_token_kubeconfig_authenticates_as_the_service_account(
    kube: ControlPlane, kube_client: Client, bound_pod: BoundPod
) -> None:
    token = _request_token(kube_client, bound_pod)
    as_agent = Client(KubeConfig.from_file(kube.kubeconfig_for_token(token)))
    info = as_agent.create(SelfSubjectReview()).status.userInfo
    assert info.username == f"system:serviceaccount:{bound_pod.namespace}:agent"
    assert info.extra[NODE_NAME_EXTRA] == [bound_pod.node]


def test_token_dies_with_its_pod(kube_client: Client, bound_pod: BoundPod) -> None:
    token = _request_token(kube_client, bound_pod)
    # Without a kubelet a graceful delete never finishes; grace 0 removes the object at once.
    kube_client.delete(Pod, "agent-pod", namespace=bound_pod.namespace, grace_period=0)
    # The apiserver checks the binding against its informer cache, which learns of the delete
    # a moment later: poll, with a deadline that only stops a hung test.
    deadline = time.monotonic() + 60
    while _review(kube_client, token).status.authenticated is True:
        assert time.monotonic() < deadline, "the token still authenticates 60 s after its Pod was deleted"
        time.sleep(0.2)
