"""The agent on a real kube-apiserver: a local process with NODE_NAME set and its own root,
real storage servers, and both localmodel's and KServe's CRDs (module parameter `crd_flavor`).

With KServe's CRDs the apiserver prunes every additive status field; the agent must still drive
`status.modelStatus` exactly, so assertions on details are made only where the fields survive.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, ServiceAccount
from lightkube.types import PatchType

from localmodel.api.keys import storage_key
from localmodel.fetch.ranges import RangeSet
from localmodel.kube import resources
from tests.faults.helpers import journal, overlap, union
from tests.node.agent_process import metric_value, wait_until
from tests.node.cluster import ClusterAgents
from tests.node.models import make_model, model_dir, tree_digests
from tests.node.tokens import (
    AGENT_NAMESPACE,
    JOBS_NAMESPACE,
    agent_kubeconfig,
    install_agent_rbac,
)
from tests.servers.hf import LocalHub
from tests.servers.http import FaultServer
from tests.servers.nginx import PRIVATE_TOKEN, NginxServer
from tests.servers.s3 import RcloneS3Server

MiB = 2**20


def entry(uri: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"sourceModelUri": uri, "modelName": name, "namespace": "", **extra}


def local_model(tmp: Path, name: str, files: dict[str, int], seed: int = 0) -> tuple[str, dict[str, str]]:
    folder = tmp / "sources" / name
    return folder.as_uri(), make_model(folder, files, seed=seed)


# --- the life of a model ------------------------------------------------------------------------


def test_pending_downloading_downloaded_with_content_verified_and_events(
    cluster: ClusterAgents, fault_server: FaultServer, tmp_path: Path
) -> None:
    big = os.urandom(24 * MiB)
    small = os.urandom(MiB)
    # 4 MiB/s per connection: the 16 MiB chunks of the file run in parallel, and progress
    # must still be seen between journal steps (4 MiB).
    uri_big = fault_server.add(f"/{tmp_path.name}/big.safetensors", big, throttle=4 * MiB)
    uri_small = fault_server.add(f"/{tmp_path.name}/small.safetensors", small, throttle=2 * MiB)
    node = cluster.node([entry(uri_big, "big"), entry(uri_small, "small"),
                         entry(uri_big, "big", namespace="team")])
    agent = cluster.start_agent(node, "--max-concurrent-downloads", "1")

    seen: dict[str, list[str]] = {"big": [], "small": []}
    progress: list[int] = []

    def both_downloaded() -> bool:
        status = cluster.status(node)
        phases = status.get("modelStatus") or {}
        for key in seen:
            if phases.get(key) and (not seen[key] or seen[key][-1] != phases[key]):
                seen[key].append(phases[key])
        done = ((status.get("modelDetails") or {}).get("big") or {}).get("bytesDone")
        if phases.get("big") == "ModelDownloading" and done:
            progress.append(done)
        return all(phases.get(k) == "ModelDownloaded" for k in seen)

    wait_until(both_downloaded, "both models downloaded", agent=agent, interval=0.05)
    assert "ModelDownloadPending" in seen["big"] + seen["small"], seen
    assert all("ModelDownloading" in seen[k] and seen[k][-1] == "ModelDownloaded" for k in seen), seen
    status = cluster.status(node)
    assert status["modelStatus"] == {"big": "ModelDownloaded", "small": "ModelDownloaded",
                                     "team/big": "ModelDownloaded"}
    for uri, data in ((uri_big, big), (uri_small, small)):
        name = uri.rsplit("/", 1)[1]
        assert tree_digests(model_dir(cluster.root(node), uri)) == {name: hashlib.sha256(data).hexdigest()}

    if cluster.pruned:
        assert set(status) == {"modelStatus"}, "KServe's CRDs keep only modelStatus"
    else:
        assert any(0 < done < len(big) for done in progress), progress
        detail = status["modelDetails"]["big"]
        assert detail["bytesTotal"] == detail["bytesDone"] == len(big)
        assert detail["storageKey"] == storage_key(uri_big) and detail["digest"].startswith("sha256:")
        assert detail["startTime"] and detail["completionTime"]
        assert status["modelsDownloaded"] == 3
        assert status["observedGeneration"] == cluster.get(node)["metadata"]["generation"]
        assert status["disk"]["freeBytes"] > 0

    def events_recorded() -> list[dict[str, Any]] | None:
        events = cluster.events(node)
        reasons = [e["reason"] for e in events]
        return events if reasons.count("Downloaded") == 2 and reasons.count("DownloadStarted") == 2 else None

    events = wait_until(events_recorded, "Events for both downloads", agent=agent)
    assert all(e["kind"] == "LocalModelNode" for e in events)
    assert any("content verified" in (e["note"] or "") for e in events)


def test_removed_entry_loses_folder_and_status_key(cluster: ClusterAgents, tmp_path: Path) -> None:
    keep_uri, keep_digests = local_model(tmp_path, "keep", {"w.bin": MiB})
    drop_uri, _ = local_model(tmp_path, "drop", {"w.bin": MiB}, seed=1)
    node = cluster.node([entry(keep_uri, "keep"), entry(drop_uri, "drop", namespace="team")])
    root = cluster.root(node)
    (root / "models" / "not-a-model").mkdir(parents=True)
    (root / "models" / "not-a-model" / "data").write_text("keep me")
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "team/drop", "ModelDownloaded", agent)
    cluster.wait_phase(node, "keep", "ModelDownloaded", agent)

    cluster.set_entries(node, [entry(keep_uri, "keep")])
    wait_until(lambda: set(cluster.status(node)["modelStatus"]) == {"keep"}, "team/drop's key to go", agent=agent)
    wait_until(lambda: not model_dir(root, drop_uri).exists(), "drop's folder to go", agent=agent)
    assert tree_digests(model_dir(root, keep_uri)) == keep_digests
    assert (root / "models" / "not-a-model" / "data").read_text() == "keep me"
    if not cluster.pruned:
        assert set(cluster.status(node)["modelDetails"]) == {"keep"}
    wait_until(lambda: any(e["reason"] == "ModelDeleted" for e in cluster.events(node)), "a ModelDeleted Event",
               agent=agent)


def test_folder_deleted_by_hand_is_downloaded_again(cluster: ClusterAgents, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"config.json": 200, "w.bin": 2 * MiB})
    node = cluster.node([entry(uri, "m")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "m", "ModelDownloaded", agent)
    shutil.rmtree(model_dir(cluster.root(node), uri))
    # Found by the periodic pass (reconcilationFrequencyInSecs: 1 in the test ConfigMap).
    wait_until(lambda: model_dir(cluster.root(node), uri).is_dir()
               and tree_digests(model_dir(cluster.root(node), uri)) == digests
               and cluster.phase(node, "m") == "ModelDownloaded", "the folder to come back", agent=agent)


def test_corrupted_byte_is_found_by_the_scrub_and_repaired(cluster: ClusterAgents, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"w.bin": 3 * MiB})
    node = cluster.node([entry(uri, "m")])
    agent = cluster.start_agent(node, "--scrub-interval", "1")
    cluster.wait_phase(node, "m", "ModelDownloaded", agent)
    wait_until(lambda: metric_value(agent.metrics(), "localmodel_scrubs_total", 'result="intact"'),
               "a first scrub", agent=agent)
    target = model_dir(cluster.root(node), uri) / "w.bin"
    with open(target, "r+b") as handle:
        handle.seek(2 * MiB + 1)
        byte = handle.read(1)
        handle.seek(2 * MiB + 1)
        handle.write(bytes([byte[0] ^ 0x01]))
    wait_until(lambda: metric_value(agent.metrics(), "localmodel_scrubs_total", 'result="damaged"'),
               "the scrub to find the flipped byte", agent=agent)
    wait_until(lambda: tree_digests(model_dir(cluster.root(node), uri)) == digests
               and cluster.phase(node, "m") == "ModelDownloaded", "the repair", agent=agent)
    wait_until(lambda: any(e["reason"] == "ModelDamaged" for e in cluster.events(node)), "a ModelDamaged Event",
               agent=agent)


def test_bad_uri_is_a_download_error_with_reason_while_another_model_stays_downloaded(
    cluster: ClusterAgents, tmp_path: Path
) -> None:
    good_uri, digests = local_model(tmp_path, "good", {"w.bin": MiB})
    bad_uri = (tmp_path / "sources" / "missing").as_uri()
    node = cluster.node([entry(good_uri, "good"), entry(bad_uri, "bad")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "bad", "ModelDownloadError", agent)
    cluster.wait_phase(node, "good", "ModelDownloaded", agent)
    if not cluster.pruned:
        detail = cluster.detail(node, "bad")
        assert detail["reason"] == "NotFound" and "does not exist" in detail["message"]
    # The reason is in the Event whichever CRDs are installed.
    failed = wait_until(lambda: [e for e in cluster.events(node) if e["reason"] == "DownloadFailed"],
                        "a DownloadFailed Event", agent=agent)
    assert "NotFound" in failed[0]["note"] and failed[0]["type"] == "Warning"
    # Retried: it succeeds once the source exists; the good model was never disturbed.
    make_model(tmp_path / "sources" / "missing", {"w.bin": 1000})
    cluster.wait_phase(node, "bad", "ModelDownloaded", agent)
    assert cluster.phase(node, "good") == "ModelDownloaded"
    assert tree_digests(model_dir(cluster.root(node), good_uri)) == digests


def test_agent_killed_mid_download_resumes_after_restart(
    cluster: ClusterAgents, fault_server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(48 * MiB)
    path = f"/{tmp_path.name}/slow.bin"
    uri = fault_server.add(path, data, throttle=8 * MiB)
    node = cluster.node([entry(uri, "slow")])
    first = cluster.start_agent(node)
    staging = cluster.root(node) / "staging" / storage_key(uri)

    def journaled() -> RangeSet:
        # The engine journals every 4 MiB of each ranged request; its journal is what a restart
        # resumes from (several chunks of the file are in flight at once).
        return next(iter(journal(staging)[0].values()), RangeSet())

    wait_until(lambda: journaled().covered() >= 16 * MiB, "16 MiB journaled", agent=first)
    first.kill()
    vouched = journaled()
    served_before = len(fault_server.served(path))
    second = cluster.start_agent(node)
    cluster.wait_phase(node, "slow", "ModelDownloaded", second)
    assert (model_dir(cluster.root(node), uri) / "slow.bin").read_bytes() == data
    resumed = fault_server.served(path)[served_before:]
    assert resumed and overlap(union(resumed), vouched) == 0, (resumed, list(vouched))
    assert sum(end - start for start, end in resumed) <= len(data) - vouched.covered()


# --- isolation between nodes ----------------------------------------------------------------------


def test_two_agents_each_handle_only_their_own_node(cluster: ClusterAgents, tmp_path: Path) -> None:
    uri_1, digests_1 = local_model(tmp_path, "one", {"w.bin": MiB})
    uri_2, digests_2 = local_model(tmp_path, "two", {"w.bin": MiB}, seed=3)
    n1 = cluster.node([entry(uri_1, "one")])
    n2 = cluster.node([entry(uri_2, "two")])
    agent_1 = cluster.start_agent(n1)
    cluster.wait_phase(n1, "one", "ModelDownloaded", agent_1)
    # n1's agent ignored n2 entirely.
    assert cluster.status(n2) == {}
    assert not model_dir(cluster.root(n1), uri_2).exists()

    agent_2 = cluster.start_agent(n2)
    cluster.wait_phase(n2, "two", "ModelDownloaded", agent_2)
    assert tree_digests(model_dir(cluster.root(n1), uri_1)) == digests_1
    assert tree_digests(model_dir(cluster.root(n2), uri_2)) == digests_2
    assert not model_dir(cluster.root(n2), uri_1).exists()
    assert set(cluster.status(n1)["modelStatus"]) == {"one"}
    assert set(cluster.status(n2)["modelStatus"]) == {"two"}

    # A change to n2 is seen by n2's agent only.
    cluster.set_entries(n2, [])
    wait_until(lambda: cluster.status(n2)["modelStatus"] == {}, "n2 emptied", agent=agent_2)
    wait_until(lambda: not model_dir(cluster.root(n2), uri_2).exists(), "n2's folder gone", agent=agent_2)
    assert tree_digests(model_dir(cluster.root(n1), uri_1)) == digests_1
    assert cluster.status(n1)["modelStatus"] == {"one": "ModelDownloaded"}


def test_missing_local_model_node_keeps_files_and_is_picked_up_when_created(
    cluster: ClusterAgents, tmp_path: Path
) -> None:
    uri, digests = local_model(tmp_path, "m", {"w.bin": MiB})
    node = cluster.node([entry(uri, "m")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "m", "ModelDownloaded", agent)
    cluster.client.delete(resources.LocalModelNode, node)
    wait_until(lambda: "LocalModelNode is gone" in agent.log_text(), "the agent to notice", agent=agent)
    assert tree_digests(model_dir(cluster.root(node), uri)) == digests  # KServe's A3: files kept
    cluster.node([entry(uri, "m")], name=node)
    cluster.wait_phase(node, "m", "ModelDownloaded", agent)


# --- budgets and credentials from the cluster -------------------------------------------------------


def test_cache_model_size_and_group_storage_limit_are_enforced(cluster: ClusterAgents, tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "big", {"w.bin": 3 * MiB})
    uri_2, _ = local_model(tmp_path, "other", {"w.bin": 3 * MiB}, seed=5)
    cache = f"cache-{tmp_path.name[-12:].lower().replace('_', '-')}"
    group = f"group-{tmp_path.name[-12:].lower().replace('_', '-')}"
    cluster.client.create(resources.LocalModelCache.from_dict({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelCache", "metadata": {"name": cache},
        "spec": {"sourceModelUri": uri, "modelSize": "2Mi", "nodeGroups": [group]}}))
    cluster.client.create(resources.LocalModelNodeGroup.from_dict({
        "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNodeGroup", "metadata": {"name": group},
        "spec": {"storageLimit": "4Mi", "persistentVolumeSpec": {}, "persistentVolumeClaimSpec": {}}}))
    try:
        node = cluster.node([entry(uri, cache, nodeGroup=group), entry(uri_2, "other", nodeGroup=group)])
        agent = cluster.start_agent(node, "--max-concurrent-downloads", "1")
        cluster.wait_phase(node, cache, "ModelDownloadError", agent)
        cluster.wait_phase(node, "other", "ModelDownloaded", agent)
        if not cluster.pruned:
            assert cluster.detail(node, cache)["reason"] == "ModelSizeExceeded"
        # Fix the declared size: now the group's 4Mi limit (3Mi already used) refuses it.
        cluster.client.patch(resources.LocalModelCache, cache, {"spec": {"modelSize": "3Mi"}},
                             patch_type=PatchType.MERGE)
        wait_until(lambda: any("StorageLimitExceeded" in (e["note"] or "") for e in cluster.events(node)),
                   "a StorageLimitExceeded refusal", agent=agent)
        cluster.client.patch(resources.LocalModelNodeGroup, group, {"spec": {"storageLimit": "8Mi"}},
                             patch_type=PatchType.MERGE)
        cluster.wait_phase(node, cache, "ModelDownloaded", agent)
    finally:
        cluster.client.delete(resources.LocalModelCache, cache)
        cluster.client.delete(resources.LocalModelNodeGroup, group)


def _private_model(nginx: NginxServer, tmp_path: Path) -> tuple[str, bytes]:
    data = os.urandom(MiB)
    folder = nginx.root / "private" / f"cluster-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(data)
    (folder / "other.bin").write_bytes(data)
    return f"{nginx.http_url}/private/cluster-{tmp_path.name}/model.bin", data


def _secret(namespace: str, name: str, data: dict[str, str]) -> Secret:
    return Secret(metadata=ObjectMeta(name=name, namespace=namespace),
                  data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})


def test_service_account_secret_headers_authorise_the_download(
    cluster: ClusterAgents, nginx: NginxServer, tmp_path: Path
) -> None:
    uri, data = _private_model(nginx, tmp_path)
    jobs = cluster.job_namespace
    cluster.client.create(_secret(jobs, "web-creds", {
        "https-host": "127.0.0.1", "headers": json.dumps({"Authorization": f"Bearer {PRIVATE_TOKEN}"})}))
    cluster.client.create(ServiceAccount(metadata=ObjectMeta(name="puller", namespace=jobs),
                                         secrets=[ObjectReference(name="web-creds")]))
    node = cluster.node([entry(uri, "private", serviceAccountName="puller")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "private", "ModelDownloaded", agent)
    assert (model_dir(cluster.root(node), uri) / "model.bin").read_bytes() == data


def test_storage_key_of_the_storage_config_secret_and_secrets_never_shown(
    cluster: ClusterAgents, nginx: NginxServer, tmp_path: Path
) -> None:
    uri, data = _private_model(nginx, tmp_path)
    jobs = cluster.job_namespace
    wrong = "Bearer WRONG-SECRET-c0ffee"
    cluster.client.create(_secret(jobs, "storage-config", {
        "web": json.dumps({"type": "https", "headers": json.dumps({"Authorization": f"Bearer {PRIVATE_TOKEN}"})}),
        "wrong": json.dumps({"type": "https", "headers": json.dumps({"Authorization": wrong})}),
    }))
    node = cluster.node([entry(uri, "good", storage={"key": "web"})])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "good", "ModelDownloaded", agent)
    assert (model_dir(cluster.root(node), uri) / "model.bin").read_bytes() == data

    other = uri.replace("/model.bin", "/other.bin")
    third = uri.replace("/model.bin", "/third.bin")
    cluster.set_entries(node, [entry(uri, "good", storage={"key": "web"}),
                               entry(other, "denied", storage={"key": "wrong"}),
                               entry(third, "nokey", storage={"key": "absent"})])
    cluster.wait_phase(node, "denied", "ModelDownloadError", agent)
    cluster.wait_phase(node, "nokey", "ModelDownloadError", agent)

    # A key missing from the Secret: downloaded without credentials (as KServe's agent does), so
    # the private origin refuses, and the refusal names what is missing.
    missing = f"storage key 'absent' not found in storage secret {jobs}/storage-config"

    def both_failures_reported() -> str | None:
        notes = " ".join(e["note"] or "" for e in cluster.events(node) if e["reason"] == "DownloadFailed")
        return notes if notes.count("AccessDenied") >= 2 and missing in notes else None

    notes = wait_until(both_failures_reported, "both failures in Events", agent=agent)
    if not cluster.pruned:
        detail = cluster.detail(node, "nokey")
        assert detail["reason"] == "AccessDenied" and missing in detail["message"]
        assert detail["warning"] == f"{missing}; downloading without credentials"
    for text in (json.dumps(cluster.get(node)), notes, agent.log_text()):
        assert "WRONG-SECRET" not in text and PRIVATE_TOKEN not in text



def test_missing_storage_config_secret_still_brings_a_public_model_and_says_so(
    cluster: ClusterAgents, nginx: NginxServer, tmp_path: Path
) -> None:
    """KServe's agent logs "Failed to inject credentials" and downloads anyway; so do we, out loud.

    Where the missing Secret would decide where the request goes (an s3:// bucket without a known
    endpoint), the download is refused instead.
    """
    folder = nginx.root / "public" / f"nosecret-{tmp_path.name}"
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(MiB)
    (folder / "model.bin").write_bytes(data)
    uri = f"{nginx.http_url}/public/nosecret-{tmp_path.name}/model.bin"
    jobs = cluster.job_namespace
    node = cluster.node([entry(uri, "public", storage={"key": "web"}),
                         entry("s3://somebody-elses-bucket/m", "s3model", storage={"key": "minio"})])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "public", "ModelDownloaded", agent)
    cluster.wait_phase(node, "s3model", "ModelDownloadError", agent)
    assert (model_dir(cluster.root(node), uri) / "model.bin").read_bytes() == data
    missing = f"storage secret {jobs}/storage-config not found"
    notes = wait_until(
        lambda: [e["note"] for e in cluster.events(node) if e["reason"] == "CredentialsMissing"],
        "a CredentialsMissing Event", agent=agent)
    assert any(uri in note and missing in note for note in notes)
    if not cluster.pruned:
        assert cluster.detail(node, "public")["warning"] == f"{missing}; downloading without credentials"
        refused = cluster.detail(node, "s3model")
        assert refused["reason"] == "InvalidCredentials"
        assert missing in refused["message"] and "AWS S3" in refused["message"]
    # Nothing was asked of any S3 endpoint for the refused entry: it never reached the engine.
    assert "somebody-elses-bucket" not in " ".join(
        line for line in agent.log_text().splitlines() if "download queued" in line)


# --- least privilege: RBAC and the admission policy ---------------------------------------------------


def test_bound_token_of_an_agent_on_n1_cannot_write_n2_and_runs_n1(
    cluster: ClusterAgents, tmp_path: Path
) -> None:
    install_agent_rbac(cluster.kube, cluster.client)
    uri, digests = local_model(tmp_path, "m", {"w.bin": MiB})
    n1 = cluster.node([entry(uri, "m")])
    n2 = cluster.node([entry(uri, "m")])
    kubeconfig, client = agent_kubeconfig(cluster.kube, cluster.client, n1)

    # The admission policy may take a moment to be enforced: retry until it denies.
    def denied() -> ApiError | None:
        try:
            client.patch(resources.LocalModelNode.Status, n2, {"status": {"modelStatus": {"m": "ModelDownloaded"}}},
                         patch_type=PatchType.MERGE)
        except ApiError as exc:
            return exc if exc.status.code == 403 else None
        return None

    error = wait_until(denied, "the policy to deny n1's token writing n2")
    assert "own node" in (error.status.message or ""), error.status.message
    # RBAC: no secrets outside the job namespace, no writes to the spec.
    with pytest.raises(ApiError) as caught:
        client.get(Secret, "anything", namespace="default")
    assert caught.value.status.code == 403

    # The same token runs the agent of n1: every read and write it needs is allowed.
    cluster.write_config(AGENT_NAMESPACE, JOBS_NAMESPACE)
    agent = cluster.start_agent(n1, kubeconfig=kubeconfig, namespace=AGENT_NAMESPACE)
    cluster.wait_phase(n1, "m", "ModelDownloaded", agent)
    assert tree_digests(model_dir(cluster.root(n1), uri)) == digests
    wait_until(lambda: any(e["reason"] == "Downloaded" for e in cluster.events(n1)), "its Events", agent=agent)
    # The apiserver words every RBAC or policy refusal "forbidden"; a bare "403" would also
    # match byte counts and ports in the log.
    assert "forbidden" not in agent.log_text().lower()


def test_agent_survives_an_apiserver_restart(cluster: ClusterAgents, tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "a", {"w.bin": 1000})
    uri_2, digests_2 = local_model(tmp_path, "b", {"w.bin": 2000}, seed=9)
    node = cluster.node([entry(uri, "a")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "a", "ModelDownloaded", agent)
    cluster.kube.stop_apiserver()
    cluster.kube.start_apiserver()
    cluster.set_entries(node, [entry(uri, "a"), entry(uri_2, "b")])
    cluster.wait_phase(node, "b", "ModelDownloaded", agent)
    assert tree_digests(model_dir(cluster.root(node), uri_2)) == digests_2
    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0


def test_watch_lists_again_after_410_gone_and_keeps_waking(cluster: ClusterAgents) -> None:
    """A watch resumed from a compacted resourceVersion gets 410 Gone: list again, carry on."""
    import asyncio

    from localmodel.kube.client import async_client
    from localmodel.node.cluster import ClusterBackend

    node = cluster.node([])

    async def scenario() -> tuple[int, int]:
        backend = ClusterBackend(async_client(str(cluster.kube.kubeconfig)), node_name=node,
                                 namespace=cluster.config_namespace, resume_from="1")
        wakes = asyncio.Queue[None]()
        await backend.start(lambda: wakes.put_nowait(None))
        try:
            async def until(condition: Any) -> None:
                while not condition():
                    await asyncio.wait_for(wakes.get(), timeout=120)

            await until(lambda: backend.lists >= 1)
            lists_after_gone = backend.lists
            while not wakes.empty():
                wakes.get_nowait()
            await asyncio.to_thread(cluster.set_entries, node, [entry("file:///x", "x")])
            await asyncio.wait_for(wakes.get(), timeout=120)  # the spec change wakes the agent
            return lists_after_gone, backend.lists
        finally:
            await backend.close()

    lists_after_gone, lists_at_end = asyncio.run(scenario())
    assert lists_after_gone == 1 and lists_at_end == 1


def test_s3_credentials_from_a_service_account_secret_with_kserve_annotations(
    cluster: ClusterAgents, rclone_s3: RcloneS3Server, tmp_path: Path
) -> None:
    """rclone checks SigV4 signatures: the download only works with the secret's key pair."""
    bucket = f"b-{tmp_path.name[-10:].lower().replace('_', '-')}"
    digests = make_model(rclone_s3.bucket(bucket) / "llama", {"config.json": 300, "w/model.safetensors": 3 * MiB})
    host = rclone_s3.endpoint.removeprefix("http://")
    jobs = cluster.job_namespace
    cluster.client.create(Secret(
        metadata=ObjectMeta(name="s3creds", namespace=jobs, annotations={
            "serving.kserve.io/s3-endpoint": host, "serving.kserve.io/s3-usehttps": "0",
            "serving.kserve.io/s3-region": rclone_s3.region}),
        data={"awsAccessKeyID": base64.b64encode(rclone_s3.access_key.encode()).decode(),
              "awsSecretAccessKey": base64.b64encode(rclone_s3.secret_key.encode()).decode()},
    ))
    cluster.client.create(ServiceAccount(metadata=ObjectMeta(name="s3-puller", namespace=jobs),
                                         secrets=[ObjectReference(name="s3creds")]))
    uri = f"s3://{bucket}/llama"
    anonymous = f"s3://{bucket}/llama/"  # another storage key, no credentials: refused by rclone
    node = cluster.node([entry(uri, "llama", serviceAccountName="s3-puller"), entry(anonymous, "anon")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "llama", "ModelDownloaded", agent)
    cluster.wait_phase(node, "anon", "ModelDownloadError", agent)
    assert tree_digests(model_dir(cluster.root(node), uri)) == digests
    notes = " ".join(e["note"] or "" for e in cluster.events(node))
    assert rclone_s3.secret_key not in notes + agent.log_text() + json.dumps(cluster.get(node))


def test_hf_token_and_endpoint_from_the_storage_config_secret(
    cluster: ClusterAgents, hf_hub: LocalHub
) -> None:
    token = "hf_agent_test_token_91ab"
    repo = f"org/model-{cluster.job_namespace[-8:]}"
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(2 * MiB)}
    sha = hf_hub.add_commit(repo, files)
    hf_hub.faults.required_token = token
    cluster.client.create(_secret(cluster.job_namespace, "storage-config", {
        "hub": json.dumps({"type": "hf", "token": token, "endpoint": hf_hub.url})}))
    node = cluster.node([entry(f"hf://{repo}", "hub-model", storage={"key": "hub"})])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "hub-model", "ModelDownloaded", agent)
    folder = model_dir(cluster.root(node), f"hf://{repo}")
    assert tree_digests(folder) == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    if not cluster.pruned:
        assert cluster.detail(node, "hub-model")["revision"] == sha
    assert hf_hub.tokens_sent_to_cdn == 0
    assert token not in agent.log_text() + json.dumps(cluster.get(node))


def test_folder_left_by_kserves_agent_is_adopted_not_downloaded(cluster: ClusterAgents, tmp_path: Path) -> None:
    """Switching from KServe's agent: the same host folder, models/<key>/ without a manifest."""
    uri, digests = local_model(tmp_path, "m", {"config.json": 300, "w/model.safetensors": 3 * MiB})
    node = cluster.node([entry(uri, "m")])
    kserve_copy = model_dir(cluster.root(node), uri)
    shutil.copytree(Path(uri.removeprefix("file://")), kserve_copy)
    inode = (kserve_copy / "w" / "model.safetensors").stat().st_ino
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "m", "ModelDownloaded", agent)
    assert (kserve_copy / "w" / "model.safetensors").stat().st_ino == inode
    assert tree_digests(kserve_copy) == digests
    wait_until(lambda: [e for e in cluster.events(node) if e["reason"] == "Adopted"], "an Adopted Event", agent=agent)
    assert metric_value(agent.metrics(), "localmodel_models_adopted_total") == 1


def test_kserve_0_17_layout_under_either_crd_moves_the_old_folder_and_links_the_name(
    cluster: ClusterAgents, tmp_path: Path
) -> None:
    """With KServe <= 0.17's controller, Pods mount models/<modelName>: --folder-layout
    model-name keeps the folder under its storage key, adopts KServe's old copy and links the
    name to it; nothing is downloaded again."""
    uri, digests = local_model(tmp_path, "old", {"config.json": 300, "w/model.safetensors": 2 * MiB})
    node = cluster.node([entry(uri, "llama")])
    old = cluster.root(node) / "models" / "llama"  # what KServe 0.17's agent left
    shutil.copytree(Path(uri.removeprefix("file://")), old)
    inode = (old / "w" / "model.safetensors").stat().st_ino
    agent = cluster.start_agent(node, "--folder-layout", "model-name")
    cluster.wait_phase(node, "llama", "ModelDownloaded", agent)
    models = cluster.root(node) / "models"
    key = storage_key(uri)
    wait_until(lambda: os.path.islink(models / "llama"), "the name linked", agent=agent)
    assert os.readlink(models / "llama") == key
    assert (models / key / "w" / "model.safetensors").stat().st_ino == inode, "moved, not copied"
    assert tree_digests(models / "llama") == digests
    wait_until(lambda: [e for e in cluster.events(node) if e["reason"] == "Adopted"], "an Adopted Event", agent=agent)
    cluster.set_entries(node, [])  # the cache is deleted: folder and link go
    wait_until(lambda: not os.path.lexists(models / "llama") and not (models / key).exists(),
               "the folder and its link removed", agent=agent)


def test_oci_modelpack_and_modelcar_with_an_image_pull_secret(
    cluster: ClusterAgents, oci_basic_registry: Any, tmp_path: Path
) -> None:
    """Both OCI artifact kinds through the agent: registry credentials from a dockerconfigjson
    Secret listed as the ServiceAccount's imagePullSecret; the tag's digest is the revision."""
    import tarfile

    from lightkube.models.core_v1 import LocalObjectReference

    from tests.sources.test_oci import layer_tar, member, push_modelcar, push_modelpack

    registry = oci_basic_registry
    pack = {"config.json": b'{"kind": "pack"}', "w/model.safetensors": os.urandom(3 * MiB)}
    pack_digest = push_modelpack(registry, tmp_path / "push", f"agent/pack-{tmp_path.name[-6:]}:v1", pack)
    weights = os.urandom(2 * MiB)
    layer = layer_tar(tmp_path / "car.tar", [member("models", kind=tarfile.DIRTYPE),
                                            member("models/model.bin", weights),
                                            member("usr", kind=tarfile.DIRTYPE), member("usr/x", b"x")])
    car_digest = push_modelcar(registry, f"agent/car-{tmp_path.name[-6:]}:v1", layer)
    jobs = cluster.job_namespace
    cluster.client.create(Secret(metadata=ObjectMeta(name="registry-creds", namespace=jobs),
                                 type="kubernetes.io/dockerconfigjson",
                                 data={".dockerconfigjson": base64.b64encode(registry.auth_setting.encode()).decode()}))
    cluster.client.create(ServiceAccount(metadata=ObjectMeta(name="oci-puller", namespace=jobs),
                                         imagePullSecrets=[LocalObjectReference(name="registry-creds")]))
    pack_uri = f"oci://{registry.host}/agent/pack-{tmp_path.name[-6:]}:v1"
    car_uri = f"oci://{registry.host}/agent/car-{tmp_path.name[-6:]}:v1"
    node = cluster.node([entry(pack_uri, "pack", serviceAccountName="oci-puller"),
                         entry(car_uri, "car", serviceAccountName="oci-puller"),
                         entry(car_uri + "-anonymous", "anonymous")])
    agent = cluster.start_agent(node)
    cluster.wait_phase(node, "pack", "ModelDownloaded", agent)
    cluster.wait_phase(node, "car", "ModelDownloaded", agent)
    cluster.wait_phase(node, "anonymous", "ModelDownloadError", agent)
    assert tree_digests(model_dir(cluster.root(node), pack_uri)) == {
        p: hashlib.sha256(d).hexdigest() for p, d in pack.items()}
    assert tree_digests(model_dir(cluster.root(node), car_uri)) == {
        "model.bin": hashlib.sha256(weights).hexdigest()}
    if not cluster.pruned:
        assert cluster.detail(node, "pack")["revision"] == pack_digest
        assert cluster.detail(node, "car")["revision"] == car_digest
        assert cluster.detail(node, "anonymous")["reason"] in ("AccessDenied", "NotFound")
    assert "pull-secret" not in agent.log_text() + json.dumps(cluster.get(node))
