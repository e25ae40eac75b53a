"""`localmodel agent --manifest FILE --root DIR`: the whole reconcile without Kubernetes.

The agent runs as a real process against real sources (local folders, nginx, the fault server);
status is read from DIR/status.json, files are checked byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localmodel.api.keys import storage_key
from tests.faults.helpers import journal, overlap, union
from tests.node.agent_process import (
    AgentProcess,
    metric_value,
    read_status_file,
    wait_until,
)
from tests.node.models import make_model, model_dir, tree_digests
from tests.servers.http import FaultServer
from tests.servers.nginx import PRIVATE_TOKEN, NginxServer

MiB = 2**20
FAST = ["--resync", "1", "--progress-interval", "0.3", "--retry-initial", "1", "--retry-max", "2"]


class Standalone:
    """One agent in standalone mode with its own root and manifest file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.manifest = tmp / "models.yaml"
        self.agents: list[AgentProcess] = []

    def write(self, *entries: dict[str, Any], **top: Any) -> None:
        body = {"localModels": list(entries), **top}
        temporary = self.manifest.with_suffix(".tmp")
        temporary.write_text(json.dumps(body))  # JSON is YAML
        os.replace(temporary, self.manifest)

    def start(self, *args: str, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(
            ["--manifest", str(self.manifest), "--root", str(self.root), "--node-name", "test-node", *FAST, *args],
            self.tmp / f"agent-{len(self.agents)}.log", env=env,
        ).start()
        self.agents.append(agent)
        return agent

    def status(self) -> dict[str, Any]:
        return read_status_file(self.root)

    def phase(self, key: str) -> str | None:
        return (self.status().get("modelStatus") or {}).get(key)

    def detail(self, key: str) -> dict[str, Any]:
        return dict((self.status().get("modelDetails") or {}).get(key) or {})

    def wait_phase(self, key: str, phase: str, agent: AgentProcess) -> dict[str, Any]:
        wait_until(lambda: self.phase(key) == phase, f"{key} to be {phase}", agent=agent)
        return self.status()


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    harness = Standalone(tmp_path)
    yield harness
    for agent in harness.agents:
        agent.stop()


def entry(uri: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"sourceModelUri": uri, "modelName": name, **extra}


def local_model(tmp: Path, name: str, files: dict[str, int], seed: int = 0) -> tuple[str, dict[str, str]]:
    folder = tmp / "sources" / name
    digests = make_model(folder, files, seed=seed)
    return folder.as_uri(), digests


# --- the happy path ------------------------------------------------------------------------------


def test_pending_downloading_downloaded_with_verified_content(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    # Progress moves in steps of the engine's journal (4 MiB): the first model spans several.
    first = os.urandom(24 * MiB)
    second = os.urandom(2 * MiB)
    uri_1 = fault_server.add(f"/{tmp_path.name}/first.safetensors", first, throttle=4 * MiB)
    uri_2 = fault_server.add(f"/{tmp_path.name}/second.safetensors", second, throttle=2 * MiB)
    standalone.write(entry(uri_1, "first"), entry(uri_2, "second"), entry(uri_1, "first", namespace="team"))
    agent = standalone.start("--max-concurrent-downloads", "1")

    seen: dict[str, list[str]] = {"first": [], "second": []}
    progress: list[int] = []

    def both_downloaded() -> bool:
        status = standalone.status()
        for key in seen:
            phase = status["modelStatus"].get(key)
            if phase and (not seen[key] or seen[key][-1] != phase):
                seen[key].append(phase)
            detail = status["modelDetails"].get(key) or {}
            if phase == "ModelDownloading" and detail.get("bytesDone"):
                progress.append(detail["bytesDone"])
        return all(status["modelStatus"].get(k) == "ModelDownloaded" for k in seen)

    wait_until(both_downloaded, "both models downloaded", agent=agent, interval=0.05)
    # One download at a time: one model waited as Pending while the other was Downloading.
    assert "ModelDownloadPending" in seen["first"] + seen["second"]
    for key in seen:
        assert seen[key][-1] == "ModelDownloaded"
        assert "ModelDownloading" in seen[key], seen
    assert any(0 < done < len(first) for done in progress), progress

    status = standalone.status()
    assert status["modelStatus"]["team/first"] == "ModelDownloaded"
    assert status["modelsDownloaded"] == 3
    detail = status["modelDetails"]["first"]
    assert detail["storageKey"] == storage_key(uri_1)
    assert detail["bytesTotal"] == detail["bytesDone"] == len(first)
    assert detail["digest"].startswith("sha256:")
    assert detail["startTime"] <= detail["completionTime"]
    assert status["disk"]["freeBytes"] > 0 and status["disk"]["usedBytes"] >= len(first) + len(second)
    # The folder is KServe's <root>/models/<sha256(uri)[:16]>, its content byte-exact.
    for uri, data in ((uri_1, first), (uri_2, second)):
        name = uri.rsplit("/", 1)[1]
        assert tree_digests(model_dir(standalone.root, uri)) == {name: hashlib.sha256(data).hexdigest()}
    # Entries sharing a storage key shared one download.
    assert fault_server.body_bytes(f"/{tmp_path.name}/first.safetensors") == len(first)


def test_once_exits_zero_when_every_model_is_downloaded(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"config.json": 300, "weights/w.bin": 5 * MiB})
    standalone.write(entry(uri, "m"))
    agent = standalone.start("--once")
    assert agent.wait() == 0, agent.tail()
    assert tree_digests(model_dir(standalone.root, uri)) == digests
    assert standalone.phase("m") == "ModelDownloaded"


def test_manifest_may_be_a_local_model_node_object(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"a.bin": 1000})
    standalone.manifest.write_text(
        "apiVersion: serving.kserve.io/v1alpha1\nkind: LocalModelNode\nmetadata: {name: n1}\n"
        f"spec:\n  localModels:\n  - sourceModelUri: {uri}\n    modelName: m\n"
    )
    agent = standalone.start("--once")
    assert agent.wait() == 0, agent.tail()
    assert tree_digests(model_dir(standalone.root, uri)) == digests


# --- removal -------------------------------------------------------------------------------------


def test_removed_entry_loses_folder_and_status_key_and_unknown_data_is_left(
    standalone: Standalone, tmp_path: Path
) -> None:
    keep_uri, keep_digests = local_model(tmp_path, "keep", {"w.bin": MiB})
    drop_uri, _ = local_model(tmp_path, "drop", {"w.bin": MiB}, seed=1)
    models = standalone.root / "models"
    # Unknown data: a folder that is not a storage key, and a storage-key-shaped symlink whose
    # target must survive; plus a key-shaped folder nobody asks for (KServe leftovers).
    (models / "not-a-key").mkdir(parents=True)
    (models / "not-a-key" / "precious.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_text("do not follow me")
    link = models / "0123456789abcdef"
    link.symlink_to(outside, target_is_directory=True)
    leftover = models / "fedcba9876543210"
    leftover.mkdir()
    (leftover / "old.bin").write_text("old")

    standalone.write(entry(keep_uri, "keep"), entry(drop_uri, "drop"))
    agent = standalone.start()
    standalone.wait_phase("drop", "ModelDownloaded", agent)
    standalone.wait_phase("keep", "ModelDownloaded", agent)
    assert not leftover.exists()

    standalone.write(entry(keep_uri, "keep"))
    wait_until(lambda: "drop" not in standalone.status()["modelStatus"], "drop's status key to go", agent=agent)
    wait_until(lambda: not model_dir(standalone.root, drop_uri).exists(), "drop's folder to go", agent=agent)
    assert not (standalone.root / "manifests" / f"{storage_key(drop_uri)}.json").exists()
    assert "drop" not in standalone.status()["modelDetails"]
    assert tree_digests(model_dir(standalone.root, keep_uri)) == keep_digests
    assert (models / "not-a-key" / "precious.txt").read_text() == "mine"
    assert link.is_symlink() and (outside / "precious.bin").read_text() == "do not follow me"
    assert "ModelDeleted" in agent.log_text()

    standalone.write()
    wait_until(lambda: standalone.status()["modelStatus"] == {}, "an empty modelStatus", agent=agent)
    assert not model_dir(standalone.root, keep_uri).exists()
    assert link.is_symlink() and (outside / "precious.bin").exists()


def test_symlink_where_a_wanted_model_belongs_is_reported_not_followed(
    standalone: Standalone, tmp_path: Path
) -> None:
    uri, _ = local_model(tmp_path, "m", {"w.bin": 1000})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    model_dir(standalone.root, uri).parent.mkdir(parents=True)
    model_dir(standalone.root, uri).symlink_to(outside)
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloadError", agent)
    assert standalone.detail("m")["reason"] == "PathConflict"
    assert (outside / "keep.txt").read_text() == "x" and sorted(os.listdir(outside)) == ["keep.txt"]


# --- repair --------------------------------------------------------------------------------------


def test_folder_deleted_by_hand_is_downloaded_again(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"config.json": 100, "w.bin": 2 * MiB})
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloaded", agent)
    shutil.rmtree(model_dir(standalone.root, uri))
    folder = model_dir(standalone.root, uri)
    wait_until(lambda: folder.is_dir() and tree_digests(folder) == digests
               and standalone.phase("m") == "ModelDownloaded", "the folder to come back", agent=agent)


def test_file_with_wrong_size_is_fetched_again(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"w.bin": 2 * MiB})
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloaded", agent)
    os.truncate(model_dir(standalone.root, uri) / "w.bin", MiB)
    wait_until(lambda: tree_digests(model_dir(standalone.root, uri)) == digests
               and standalone.phase("m") == "ModelDownloaded", "the file to be repaired", agent=agent)
    assert "ModelDamaged" in agent.log_text()


def test_corrupted_byte_is_found_by_the_scrub_and_repaired(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"config.json": 100, "w.bin": 3 * MiB})
    standalone.write(entry(uri, "m"))
    agent = standalone.start("--scrub-interval", "1")
    standalone.wait_phase("m", "ModelDownloaded", agent)
    wait_until(lambda: metric_value(agent.metrics(), "localmodel_scrubs_total", 'result="intact"'),
               "a first scrub", agent=agent)
    target = model_dir(standalone.root, uri) / "w.bin"
    with open(target, "r+b") as handle:  # same size: only a full re-hash can notice
        handle.seek(MiB + 7)
        byte = handle.read(1)
        handle.seek(MiB + 7)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert tree_digests(model_dir(standalone.root, uri)) != digests
    wait_until(lambda: metric_value(agent.metrics(), "localmodel_scrubs_total", 'result="damaged"'),
               "the scrub to find the damage", agent=agent)
    wait_until(lambda: tree_digests(model_dir(standalone.root, uri)) == digests
               and standalone.phase("m") == "ModelDownloaded", "the model to be repaired", agent=agent)
    assert "ModelDamaged" in agent.log_text()


# --- failure -------------------------------------------------------------------------------------


def test_bad_uri_fails_with_reason_and_is_retried_while_another_model_stays_downloaded(
    standalone: Standalone, tmp_path: Path
) -> None:
    good_uri, digests = local_model(tmp_path, "good", {"w.bin": MiB})
    missing = tmp_path / "sources" / "later"
    standalone.write(entry(good_uri, "good"), entry(missing.as_uri(), "bad"), entry("ftp://nowhere/x", "weird"))
    agent = standalone.start()
    standalone.wait_phase("bad", "ModelDownloadError", agent)
    standalone.wait_phase("weird", "ModelDownloadError", agent)
    standalone.wait_phase("good", "ModelDownloaded", agent)
    bad = standalone.detail("bad")
    assert bad["reason"] == "NotFound" and "does not exist" in bad["message"] and bad["retryAt"]
    assert standalone.detail("weird")["reason"] == "InvalidURI"
    # Retried with backoff (KServe's failed Job never is): it succeeds once the source appears.
    wait_until(lambda: metric_value(agent.metrics(), "localmodel_download_failures_total", 'reason="NotFound"')
               >= 2, "a retry", agent=agent)
    later_digests = make_model(missing, {"w.bin": 4096})
    standalone.wait_phase("bad", "ModelDownloaded", agent)
    assert tree_digests(model_dir(standalone.root, missing.as_uri())) == later_digests
    assert standalone.detail("bad").get("reason") is None
    assert standalone.phase("good") == "ModelDownloaded"
    assert tree_digests(model_dir(standalone.root, good_uri)) == digests


# --- stopping and resuming ---------------------------------------------------------------------------


def _slow_model(fault_server: FaultServer, tmp_path: Path, size: int, rate: float) -> tuple[str, str, bytes]:
    data = os.urandom(size)
    path = f"/{tmp_path.name}/slow.bin"
    return fault_server.add(path, data, throttle=rate), path, data


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_agent_stopped_mid_download_resumes_where_it_stopped(
    how: str, standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    size = 48 * MiB
    # 2 MiB/s per connection: the file's three 16 MiB chunks download in parallel for 8 s.
    uri, path, data = _slow_model(fault_server, tmp_path, size, rate=2 * MiB)
    standalone.write(entry(uri, "slow"))
    first = standalone.start()
    # bytesDone only counts journaled bytes, so a restart can resume from at least there.
    wait_until(lambda: standalone.detail("slow").get("bytesDone", 0) >= 16 * MiB, "16 MiB on disk", agent=first)
    if how == "SIGKILL":
        first.kill()
    else:
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.tail()
        assert "partial data is kept for resume" in first.log_text()
    staging = standalone.root / "staging" / storage_key(uri)
    assert staging.is_dir() and any(staging.rglob("*"))
    (vouched,) = journal(staging)[0].values()
    assert vouched.covered() >= 16 * MiB
    requests_before = len(fault_server.served(path))

    second = standalone.start()
    standalone.wait_phase("slow", "ModelDownloaded", second)
    assert tree_digests(model_dir(standalone.root, uri)) == {"slow.bin": hashlib.sha256(data).hexdigest()}
    resumed = fault_server.served(path)[requests_before:]
    # Only what the journal did not vouch for is fetched again.
    assert resumed and overlap(union(resumed), vouched) == 0, (resumed, list(vouched))
    assert sum(end - start for start, end in resumed) <= size - vouched.covered()
    assert not staging.exists()


# --- capacity --------------------------------------------------------------------------------------


def test_model_larger_than_its_declared_size_is_refused(standalone: Standalone, tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "big", {"w.bin": 3 * MiB})
    standalone.write(entry(uri, "big", modelSize="2Mi"))
    agent = standalone.start()
    standalone.wait_phase("big", "ModelDownloadError", agent)
    detail = standalone.detail("big")
    assert detail["reason"] == "ModelSizeExceeded"
    assert "3Mi" in detail["message"] and "2Mi" in detail["message"]
    assert not model_dir(standalone.root, uri).exists()


def test_node_group_storage_limit_is_enforced(standalone: Standalone, tmp_path: Path) -> None:
    first_uri, _ = local_model(tmp_path, "a", {"w.bin": 3 * MiB})
    second_uri, _ = local_model(tmp_path, "b", {"w.bin": 3 * MiB}, seed=2)
    standalone.write(entry(first_uri, "a", nodeGroup="gpu"), nodeGroups={"gpu": "5Mi"})
    agent = standalone.start("--max-concurrent-downloads", "1")
    standalone.wait_phase("a", "ModelDownloaded", agent)
    standalone.write(entry(first_uri, "a", nodeGroup="gpu"), entry(second_uri, "b", nodeGroup="gpu"),
                     nodeGroups={"gpu": "5Mi"})
    standalone.wait_phase("b", "ModelDownloadError", agent)
    detail = standalone.detail("b")
    assert detail["reason"] == "StorageLimitExceeded" and "'gpu'" in detail["message"]
    assert standalone.phase("a") == "ModelDownloaded"
    # Raising the limit lets the retry through.
    standalone.write(entry(first_uri, "a", nodeGroup="gpu"), entry(second_uri, "b", nodeGroup="gpu"),
                     nodeGroups={"gpu": "10Mi"})
    standalone.wait_phase("b", "ModelDownloaded", agent)


def test_free_space_reserve_is_enforced(standalone: Standalone, tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "m", {"w.bin": MiB})
    free = shutil.disk_usage(tmp_path).free
    standalone.write(entry(uri, "m"))
    # Keep more free than there is: nothing may be written.
    agent = standalone.start("--reserve", str(free + 2**30))
    standalone.wait_phase("m", "ModelDownloadError", agent)
    assert standalone.detail("m")["reason"] == "InsufficientSpace"


# --- credentials -----------------------------------------------------------------------------------


def _private_model(nginx: NginxServer, tmp_path: Path) -> tuple[str, bytes]:
    data = os.urandom(MiB)
    folder = nginx.root / "private" / tmp_path.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.bin").write_bytes(data)
    return f"{nginx.http_url}/private/{tmp_path.name}/model.bin", data


def test_https_style_headers_from_the_environment_authorise_the_download(
    standalone: Standalone, nginx: NginxServer, tmp_path: Path
) -> None:
    uri, data = _private_model(nginx, tmp_path)
    standalone.write(entry(uri, "private"))
    agent = standalone.start(env={"127.0.0.1-headers": json.dumps({"Authorization": f"Bearer {PRIVATE_TOKEN}"})})
    standalone.wait_phase("private", "ModelDownloaded", agent)
    assert (model_dir(standalone.root, uri) / "model.bin").read_bytes() == data


def test_rejected_credentials_give_a_reason_and_never_show_the_secret(
    standalone: Standalone, nginx: NginxServer, tmp_path: Path
) -> None:
    uri, _ = _private_model(nginx, tmp_path)
    secret = "Bearer WRONG-SECRET-7f3a9c"
    standalone.write(entry(uri, "private"))
    agent = standalone.start("--log-format", "json", env={"127.0.0.1-headers": json.dumps({"Authorization": secret})})
    standalone.wait_phase("private", "ModelDownloadError", agent)
    assert standalone.detail("private")["reason"] == "AccessDenied"
    assert "WRONG-SECRET" not in (standalone.root / "status.json").read_text()
    assert "WRONG-SECRET" not in agent.log_text()


# --- operations ------------------------------------------------------------------------------------


def test_health_readiness_metrics_and_json_logs(standalone: Standalone, tmp_path: Path) -> None:
    uri, _ = local_model(tmp_path, "m", {"w.bin": 2 * MiB})
    standalone.write(entry(uri, "m"))
    agent = standalone.start("--log-format", "json")
    standalone.wait_phase("m", "ModelDownloaded", agent)
    wait_until(lambda: agent.http(agent.health_port, "/readyz")[0] == 200, "readiness", agent=agent)
    assert agent.http(agent.health_port, "/healthz")[0] == 200

    def metrics_settled() -> str | None:
        text = agent.metrics()
        return text if metric_value(text, "localmodel_models_present") == 1 else None

    text = wait_until(metrics_settled, "models_present to be 1", agent=agent)
    assert metric_value(text, "localmodel_downloads_total", 'result="succeeded"') == 1
    assert metric_value(text, "localmodel_download_bytes_total") == 2 * MiB
    assert metric_value(text, "localmodel_download_duration_seconds_count") == 1
    assert (metric_value(text, "localmodel_disk_free_bytes") or 0) > 0
    assert metric_value(text, "localmodel_disk_used_bytes") == 2 * MiB
    assert metric_value(text, "localmodel_downloads_in_progress") == 0

    agent.signal(signal.SIGTERM)
    assert agent.wait() == 0
    lines = [line for line in agent.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "msg"} <= set(records[0])
    assert any(r.get("event") == "Downloaded" and r.get("models") == ["m"] for r in records)


def test_unreadable_manifest_keeps_the_models(standalone: Standalone, tmp_path: Path) -> None:
    uri, digests = local_model(tmp_path, "m", {"w.bin": 1000})
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloaded", agent)
    standalone.manifest.write_text("localModels: [ {broken")
    wait_until(lambda: "reconcile failed" in agent.log_text(), "the parse error to be logged", agent=agent)
    assert tree_digests(model_dir(standalone.root, uri)) == digests
    assert standalone.phase("m") == "ModelDownloaded"



def test_model_removed_mid_download_is_cancelled_and_its_partial_data_deleted(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    uri, _path, _data = _slow_model(fault_server, tmp_path, 64 * MiB, rate=2 * MiB)
    keep_uri, keep_digests = local_model(tmp_path, "keep", {"w.bin": 1000})
    standalone.write(entry(uri, "slow"), entry(keep_uri, "keep"))
    agent = standalone.start()
    wait_until(lambda: standalone.detail("slow").get("bytesDone", 0) >= 8 * MiB, "the download to run", agent=agent)
    standalone.write(entry(keep_uri, "keep"))
    wait_until(lambda: "slow" not in standalone.status()["modelStatus"], "slow's key to go", agent=agent)
    staging = standalone.root / "staging" / storage_key(uri)
    wait_until(lambda: not staging.exists() and not model_dir(standalone.root, uri).exists(),
               "its partial data to go", agent=agent)
    assert metric_value(agent.metrics(), "localmodel_downloads_total", 'result="cancelled"') == 1
    assert tree_digests(model_dir(standalone.root, keep_uri)) == keep_digests


# --- moving from KServe's agent ------------------------------------------------------------------


def test_folder_left_by_kserve_is_adopted_without_downloading(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    """KServe's agent left models/<key>/ with the files and no manifest: the agent hashes them,
    writes the manifest and reports Downloaded; the origin serves no byte."""
    data = os.urandom(3 * MiB)
    path = f"/{tmp_path.name}/kserve-model.safetensors"
    uri = fault_server.add(path, data)
    folder = model_dir(standalone.root, uri)
    folder.mkdir(parents=True)
    (folder / "kserve-model.safetensors").write_bytes(data)
    inode = (folder / "kserve-model.safetensors").stat().st_ino
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloaded", agent)

    assert fault_server.body_bytes(path) == 0
    assert (folder / "kserve-model.safetensors").stat().st_ino == inode
    assert (standalone.root / "manifests" / f"{storage_key(uri)}.json").is_file()
    assert standalone.detail("m")["digest"].startswith("sha256:")
    metrics = agent.metrics()
    assert metric_value(metrics, "localmodel_models_adopted_total") == 1
    assert not metric_value(metrics, "localmodel_download_bytes_total")
    assert "event=Adopted" in agent.log_text()


def test_folder_that_does_not_match_the_source_is_downloaded_again(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(2 * MiB)
    path = f"/{tmp_path.name}/w.safetensors"
    uri = fault_server.add(path, data)
    folder = model_dir(standalone.root, uri)
    folder.mkdir(parents=True)
    (folder / "w.safetensors").write_bytes(data[: MiB])  # an interrupted storage-initializer
    standalone.write(entry(uri, "m"))
    agent = standalone.start()
    standalone.wait_phase("m", "ModelDownloaded", agent)
    assert (folder / "w.safetensors").read_bytes() == data
    assert fault_server.body_bytes(path) == len(data)
    assert not metric_value(agent.metrics(), "localmodel_models_adopted_total")


def test_no_adopt_downloads_a_matching_folder_again(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    data = os.urandom(MiB)
    path = f"/{tmp_path.name}/w.safetensors"
    uri = fault_server.add(path, data)
    folder = model_dir(standalone.root, uri)
    folder.mkdir(parents=True)
    (folder / "w.safetensors").write_bytes(data)
    standalone.write(entry(uri, "m"))
    agent = standalone.start("--no-adopt")
    standalone.wait_phase("m", "ModelDownloaded", agent)
    assert fault_server.body_bytes(path) == len(data)
    assert not metric_value(agent.metrics(), "localmodel_models_adopted_total")


# --- KServe <= 0.17's folder layout: models/<modelName> ---------------------------------------


def test_model_name_layout_links_moves_kserves_old_folder_and_switches_back_without_downloading(
    standalone: Standalone, fault_server: FaultServer, tmp_path: Path
) -> None:
    """--folder-layout model-name: KServe <= 0.17 mounted models/<modelName>. Its old folder is
    moved under the storage key and adopted, the name becomes a link, and switching back to the
    storage-key layout removes only the link; the origin never serves a byte."""
    data = os.urandom(2 * MiB)
    path = f"/{tmp_path.name}/w.safetensors"
    uri = fault_server.add(path, data)
    other_path = f"/{tmp_path.name}/other.safetensors"
    other_uri = fault_server.add(other_path, os.urandom(MiB))
    old = standalone.root / "models" / "llama"  # what KServe 0.17's agent left
    old.mkdir(parents=True)
    (old / "w.safetensors").write_bytes(data)
    inode = (old / "w.safetensors").stat().st_ino
    standalone.write(entry(uri, "llama"), entry(uri, "llama-too"), entry(other_uri, "fresh"))
    agent = standalone.start("--folder-layout", "model-name")
    standalone.wait_phase("llama", "ModelDownloaded", agent)
    standalone.wait_phase("fresh", "ModelDownloaded", agent)

    key = storage_key(uri)
    models = standalone.root / "models"
    assert fault_server.body_bytes(path) == 0, "KServe's folder was adopted, not downloaded"
    assert (models / key / "w.safetensors").stat().st_ino == inode
    for name in ("llama", "llama-too"):  # two caches of one URI share one folder
        assert os.readlink(models / name) == key
        assert (models / name / "w.safetensors").read_bytes() == data
    wait_until(lambda: os.path.islink(models / "fresh"), "the new model's link", agent=agent)
    assert os.readlink(models / "fresh") == storage_key(other_uri)
    agent.stop()

    # Back to KServe >= 0.18's layout: the links go, the folders stay, nothing is fetched.
    agent = standalone.start()
    standalone.wait_phase("llama", "ModelDownloaded", agent)
    wait_until(lambda: not os.path.lexists(models / "llama"), "the link removed", agent=agent)
    assert not os.path.lexists(models / "llama-too") and not os.path.lexists(models / "fresh")
    assert (models / key / "w.safetensors").stat().st_ino == inode
    assert fault_server.body_bytes(path) == 0
    assert fault_server.body_bytes(other_path) == MiB  # its one download, before the switch
