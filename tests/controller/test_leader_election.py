"""Two replicas are safe: one Lease holder at a time, handover when the leader stops."""

from __future__ import annotations

from lightkube import Client
from lightkube.resources.coordination_v1 import Lease

from localmodel.controller.manager import Settings
from localmodel.controller.names import LEADER_LOCK_NAME

from .harness import RunningController, create_namespace, unique, wait_for


def test_one_leader_and_handover(kube_client: Client, cluster) -> None:  # type: ignore[no-untyped-def]
    namespace = create_namespace(kube_client, unique("lease"))

    def replica(identity: str) -> RunningController:
        # workers=0: these replicas only campaign, they do not reconcile beside the test controller
        settings = Settings(pod_namespace=namespace, identity=identity, workers=0, health_port=None,
                            lease_duration=3, renew_deadline=2, retry_period=0.3)
        return RunningController(cluster.kubeconfig, settings).start()

    def holder() -> str:
        return kube_client.get(Lease, LEADER_LOCK_NAME, namespace=namespace).spec.holderIdentity or ""

    first = replica("replica-a")
    try:
        wait_for(lambda: first.is_leader and holder() == "replica-a", "replica-a leads")
        second = replica("replica-b")
        try:
            # b renews nothing while a holds the Lease; a keeps renewing it
            renewed = kube_client.get(Lease, LEADER_LOCK_NAME, namespace=namespace).spec.renewTime
            wait_for(lambda: kube_client.get(Lease, LEADER_LOCK_NAME, namespace=namespace).spec.renewTime != renewed,
                     "a renews")
            assert holder() == "replica-a" and not second.is_leader
            first.stop()
            wait_for(lambda: second.is_leader and holder() == "replica-b", "replica-b takes over")
            assert kube_client.get(Lease, LEADER_LOCK_NAME, namespace=namespace).spec.leaseTransitions >= 1
        finally:
            second.stop()
    finally:
        first.stop()
