"""kserve#4151 on the real apiserver: a LocalModelNodeGroup whose PersistentVolume names another
node directory than the agent's hostPath is reported in the LocalModelNode's status and in an
Event naming both paths, nothing is downloaded for it, and fixing the group lets the download go.

The agent's mount is given as a recorded mountinfo (LOCALMODEL_MOUNTINFO, test-only): the
agent's --root bound from the node's /models, as the kubelet mounts a hostPath."""

from __future__ import annotations

from pathlib import Path

from lightkube.types import PatchType

from localmodel.kube import resources
from tests.node.agent_process import wait_until
from tests.node.cluster import ClusterAgents
from tests.node.models import model_dir
from tests.node.test_cluster_agent import MiB, entry, local_model
from tests.node.test_hostpath import KUBELET_CONTAINER


def _mountinfo_for(root: Path, destination: Path) -> Path:
    """The kubelet container's mountinfo with the agent's --root where /mnt/models was."""
    destination.write_text(KUBELET_CONTAINER.replace(" /mnt/models ", f" {root} "))
    return destination


def test_group_volume_elsewhere_is_refused_with_both_paths_until_fixed(cluster: ClusterAgents,
                                                                       tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "model", {"w.bin": MiB})
    group = f"group-{tmp_path.name[-12:].lower().replace('_', '-')}"
    cluster.client.create(resources.LocalModelNodeGroup.from_dict({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup", "metadata": {"name": group},
        "spec": {"storageLimit": "1Gi",
                 "persistentVolumeSpec": {"local": {"path": "/mnt/models"}, "capacity": {"storage": "1Gi"}},
                 "persistentVolumeClaimSpec": {}}}))
    try:
        node = cluster.node([entry(uri, "model", nodeGroup=group)])
        mountinfo = _mountinfo_for(cluster.root(node), tmp_path / "mountinfo")
        agent = cluster.start_agent(node, env={"LOCALMODEL_MOUNTINFO": str(mountinfo)})
        cluster.wait_phase(node, "model", "ModelDownloadError", agent)
        if not cluster.pruned:
            detail = cluster.detail(node, "model")
            assert detail["reason"] == "HostPathMismatch"
            assert "mounts /mnt/models" in detail["message"] and "the node's /models" in detail["message"]

        def refusal_event() -> dict[str, object] | None:
            return next((e for e in cluster.events(node)
                         if e["type"] == "Warning" and "HostPathMismatch" in str(e["note"])), None)

        event = wait_until(refusal_event, "a HostPathMismatch Event", agent=agent)
        assert f"LocalModelNodeGroup {group} mounts /mnt/models" in str(event["note"])
        assert "is the node's /models" in str(event["note"])
        assert not model_dir(cluster.root(node), uri).exists(), "nothing is downloaded for the group"
        assert "HostPathMismatch" in agent.log.read_text()

        # The group fixed to the agent's directory: the next attempt downloads.
        cluster.client.patch(resources.LocalModelNodeGroup, group,
                             {"spec": {"persistentVolumeSpec": {"local": {"path": "/models"}}}},
                             patch_type=PatchType.MERGE)
        cluster.wait_phase(node, "model", "ModelDownloaded", agent)
    finally:
        cluster.client.delete(resources.LocalModelNodeGroup, group)
