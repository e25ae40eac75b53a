"""API outages: the controller and two node agents, all real processes, lose the apiserver.

1. The apiserver is stopped for 30 s while both agents download a model, then started again.
   The downloads go on without it; once it is back, both agents report the model Downloaded,
   the controller copies that into the cache's status, and a cache created afterwards is
   handled end to end. Every file of every model is fetched exactly once per node (counted by
   the hub, per file and per request): no download is repeated, and no status is lost.
2. A watch expires with 410 Gone: etcd is compacted every second on this control plane, so
   after a short outage (preceded by unrelated writes) the agent and the controller resume
   their watches from versions that no longer exist. Both list again (their logs say so) and
   keep working.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from localmodel.dev.controller_process import ControllerProcess
from tests.faults import figures
from tests.faults.conftest import FaultPlane
from tests.faults.helpers import MiB, hub_storage_config, model_dir
from tests.faults.observe import file_digests
from tests.faults.processes import CacheObjects
from tests.node.agent_process import AgentProcess, wait_until
from tests.node.cluster import ClusterAgents
from tests.servers.hf import LocalHub

OUTAGE_SECONDS = 30.0


class Installation:
    """A node group of two Nodes, the controller, one agent per Node, models on the hub."""

    def __init__(self, agents: ClusterAgents, hub: LocalHub) -> None:
        self.agents = agents
        self.hub = hub
        self.tag = uuid.uuid4().hex[:6]
        self.objects = CacheObjects(agents.client)
        self.group = self.objects.group(f"pool-{self.tag}")
        self.nodes = [self.objects.node(f"n{i}-{self.tag}", self.group) for i in (1, 2)]
        agents.nodes.extend(self.nodes)  # their LocalModelNodes are deleted at the end
        hub_storage_config(agents.client, agents.job_namespace, hub.url)
        # KServe's default resync (60 s): recovery must come from the agent's own retries and
        # its watch, not from a pass every second.
        agents.write_config(agents.config_namespace, agents.job_namespace, resync=60)
        self.controller = ControllerProcess(agents.kube.kubeconfig, agents.config_namespace,
                                            agents.tmp / "controller.log",
                                            identity=f"controller-{agents.config_namespace}").start(wait=None)
        self.agent: dict[str, AgentProcess] = {node: agents.start_agent(node) for node in self.nodes}
        self.files: dict[str, dict[str, bytes]] = {}

    def model(self, name: str, size: int) -> str:
        files = {"config.json": b'{"name": "%s"}' % name.encode(),
                 "model-00001-of-00002.safetensors": os.urandom(size),
                 "model-00002-of-00002.safetensors": os.urandom(size)}
        repo = f"outage-{self.tag}/{name}"
        self.hub.add_commit(repo, files)
        self.files[name] = files
        return self.objects.cache(f"{name}-{self.tag}", f"hf://{repo}", [self.group], storage={"key": "hub"})

    def uri(self, name: str) -> str:
        return f"hf://outage-{self.tag}/{name}"

    def phase(self, node: str, name: str) -> str | None:
        try:
            return self.agents.phase(node, f"{name}-{self.tag}")
        except ApiError:
            return None

    def downloaded_everywhere(self, name: str) -> bool:
        return all(self.phase(node, name) == "ModelDownloaded" for node in self.nodes)

    def copies(self, name: str) -> dict[str, int]:
        return dict(self.objects.copies(f"{name}-{self.tag}"))

    def fully_available(self, name: str) -> bool:
        return self.copies(name) == {"available": 2, "total": 2, "failed": 0}

    def requests_per_file(self, name: str) -> dict[str, list[tuple[int, int]]]:
        return {path: self.hub.served(f"outage-{self.tag}/{name}", path) for path in self.files[name]}

    def check_content(self, name: str) -> None:
        want = {p: hashlib.sha256(d).hexdigest() for p, d in self.files[name].items()}
        for node in self.nodes:
            assert file_digests(model_dir(self.agents.root(node), self.uri(name))) == want, (node, name)

    def close(self) -> None:
        self.controller.stop()
        self.objects.close()


@pytest.fixture
def installation(agents: ClusterAgents, hf_hub: LocalHub) -> Iterator[Installation]:
    setup = Installation(agents, hf_hub)
    yield setup
    setup.close()


def test_apiserver_down_for_30_seconds_loses_no_status_and_repeats_no_download(
    installation: Installation, fault_plane: FaultPlane
) -> None:
    setup = installation
    setup.model("before", 2 * MiB)
    wait_until(lambda: setup.downloaded_everywhere("before") and setup.fully_available("before"),
               "the first model on both nodes, copies 2/2")

    # A model that is still downloading when the apiserver goes away, and finishes without it.
    setup.hub.faults.throttle = 2 * MiB
    setup.model("during", 12 * MiB)
    wait_until(lambda: sum(len(r) for r in setup.requests_per_file("during").values()) >= 6
               and all(setup.phase(n, "during") == "ModelDownloading" for n in setup.nodes),
               "both agents downloading every file of the second model")
    fault_plane.stop_apiserver()
    stopped_at = time.monotonic()
    try:
        while time.monotonic() - stopped_at < OUTAGE_SECONDS:
            assert setup.controller.running(), setup.controller.log_text()[-3000:]
            for node, agent in setup.agent.items():
                assert agent.running(), f"the agent of {node} exited during the outage:\n{agent.tail()}"
            time.sleep(0.5)
        downloads_done_during_outage = all(
            all(end - start == len(setup.files["during"][p]) for start, end in ranges) and len(ranges) == 2
            for p, ranges in setup.requests_per_file("during").items())
    finally:
        fault_plane.start_apiserver()
    back_at = time.monotonic()

    wait_until(lambda: setup.downloaded_everywhere("during"), "both agents to report the second model")
    status_after = time.monotonic() - back_at
    wait_until(lambda: setup.fully_available("during"), "the controller to copy it into the cache")
    controller_after = time.monotonic() - back_at

    setup.hub.faults.throttle = 0
    setup.model("after", 2 * MiB)
    wait_until(lambda: setup.downloaded_everywhere("after") and setup.fully_available("after"),
               "a cache created after the outage, end to end")
    new_cache_after = time.monotonic() - back_at

    for name in ("before", "during", "after"):
        setup.check_content(name)
        assert setup.downloaded_everywhere(name) and setup.fully_available(name)
        for path, ranges in setup.requests_per_file(name).items():
            size = len(setup.files[name][path])
            # One whole-file request per node: nothing fetched twice, nothing resumed.
            assert sorted(ranges) == [(0, size), (0, size)], (name, path, ranges)
    for node, agent in setup.agent.items():
        assert agent.running() and agent.process is not None
        assert "Traceback" not in agent.log_text(), agent.log_text()[-3000:]
        events = [e for e in setup.agents.events(node) if e["reason"] == "Downloaded"]
        assert len(events) == 3, (node, events)  # the one finished during the outage included
    assert setup.controller.running()

    figures.record("api outage", "apiserver down (s)", OUTAGE_SECONDS)
    figures.record("api outage", "downloads finished while the apiserver was down", downloads_done_during_outage)
    figures.record("api outage", "agents' status up to date after restart (s)", round(status_after, 1))
    figures.record("api outage", "controller's cache status up to date after restart (s)", round(controller_after, 1))
    figures.record("api outage", "new cache downloaded on both nodes after restart (s)", round(new_cache_after, 1))
    figures.record("api outage", "GETs per file per node (3 models, 2 nodes)", 1)
    figures.record("api outage", "agent or controller restarts", 0)


def churn_until_compacted(agents: ClusterAgents, fault_plane: FaultPlane, old_version: str) -> int:
    """Write unrelated objects until etcd has compacted past `old_version`; returns how many."""
    namespace = agents.namespace("churn")
    written = 0

    def expired() -> bool:
        nonlocal written
        for _ in range(5):
            agents.client.create(ConfigMap(metadata=ObjectMeta(name=f"c{written}", namespace=namespace)))
            written += 1
        try:
            for _ in agents.client.watch(ConfigMap, namespace=namespace, resource_version=old_version,
                                         server_timeout=1):
                return False
        except ApiError as exc:
            return exc.status.code == 410
        return False

    wait_until(expired, f"etcd to compact past resourceVersion {old_version}", interval=1.0)
    return written


def test_watches_that_expire_with_410_gone_are_listed_again(
    installation: Installation, fault_plane: FaultPlane
) -> None:
    setup = installation
    setup.model("first", MiB)
    wait_until(lambda: setup.downloaded_everywhere("first") and setup.fully_available("first"),
               "the first model on both nodes")
    time.sleep(2)  # let the last status writes settle, so no watch moves on by itself
    oldest = min(int(setup.agents.get(node)["metadata"]["resourceVersion"]) for node in setup.nodes)
    writes = churn_until_compacted(setup.agents, fault_plane, str(oldest))
    fault_plane.stop_apiserver(grace=0)  # every watch breaks; they resume from old versions
    try:
        time.sleep(1)
    finally:
        fault_plane.start_apiserver()
    back_at = time.monotonic()

    def relisted() -> bool:
        agent_logs = [agent.log_text() for agent in setup.agent.values()]
        return all("watch expired (410 Gone)" in text for text in agent_logs) \
            and "watch expired (410 Gone)" in setup.controller.log_text()

    wait_until(relisted, "the agents and the controller to get 410 Gone and list again")
    setup.model("second", MiB)
    wait_until(lambda: setup.downloaded_everywhere("second") and setup.fully_available("second"),
               "a cache created after the 410s, end to end")
    for name in ("first", "second"):
        setup.check_content(name)
        for path, ranges in setup.requests_per_file(name).items():
            assert len(ranges) == 2, (name, path, ranges)  # once per node
    informers = sorted({line.split("informer ")[1].split(":")[0]
                        for line in setup.controller.log_text().splitlines() if "410 Gone" in line})
    figures.record("watch 410", "writes needed to compact past the agents' versions", writes)
    figures.record("watch 410", "controller informers that listed again", ", ".join(informers))
    figures.record("watch 410", "agents that listed again", f"{len(setup.agent)} of {len(setup.agent)}")
    figures.record("watch 410", "new cache downloaded on both nodes after the 410s (s)",
                   round(time.monotonic() - back_at, 1))
