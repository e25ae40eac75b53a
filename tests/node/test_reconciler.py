"""The agent's Reconciler in process, over a MemoryBackend, a real ModelStore on a temporary
root and the real download pool: passes are driven by hand, so each step is seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from localmodel.fetch.options import FetchOptions
from localmodel.node.downloads import Jobs
from localmodel.node.metrics import AgentMetrics
from localmodel.node.reconcile import Reconciler
from localmodel.node.settings import AgentSettings, DownloadSettings
from localmodel.node.store import ModelStore
from tests.node.memory_backend import MemoryBackend


def origin(folder: Path, size: int = 200_000) -> str:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * (size // 256))
    return str(folder)


class Agent:
    def __init__(self, root: Path) -> None:
        self.backend = MemoryBackend()
        self.store = ModelStore(root)
        settings = AgentSettings(root=root, node_name="node-a",
                                 downloads=DownloadSettings(allow_local_sources=True, reserve_bytes=0))
        self.jobs = Jobs(self.store, max_concurrent=2, options=FetchOptions())
        self.reconciler = Reconciler(settings, self.backend, self.store, self.jobs, AgentMetrics())

    async def until(self, done: Callable[[], bool], what: str, passes: int = 400) -> None:
        for _ in range(passes):
            await self.reconciler.full_pass()
            if done():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{what}: status {self.backend.status}, events {self.backend.reasons()}")

    def model_status(self, name: str) -> str | None:
        return (self.backend.status.get("modelStatus") or {}).get(name)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    made = Agent(tmp_path / "root")
    yield made
    made.jobs.shutdown(5)


def test_a_wanted_model_is_downloaded_reported_and_announced(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")

    async def scenario() -> None:
        await agent.reconciler.full_pass()
        assert agent.backend.status.get("modelStatus", {}) == {}
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "downloaded")

    asyncio.run(scenario())
    folder = agent.store.layout(storage_key(uri)).dest
    assert (folder / "sub" / "weights.bin").stat().st_size == 199_936
    assert agent.backend.reasons()[:2] == ["DownloadStarted", "Downloaded"]
    details = agent.backend.status["modelDetails"]["llama"]
    assert details["storageKey"] == storage_key(uri) and details["filesTotal"] == 2


def test_a_model_no_longer_wanted_is_deleted(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")

    async def scenario() -> None:
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "downloaded")
        agent.backend.drop("llama")
        await agent.until(lambda: "ModelDeleted" in agent.backend.reasons(), "deleted")

    asyncio.run(scenario())
    assert not agent.store.layout(storage_key(uri)).dest.exists()
    assert "llama" not in (agent.backend.status.get("modelStatus") or {})


def test_a_truncated_file_is_reported_damaged_and_fetched_again(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")
    weights = agent.store.layout(storage_key(uri)).dest / "sub" / "weights.bin"

    async def scenario() -> None:
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "downloaded")
        with open(weights, "r+b") as handle:
            handle.truncate(1000)
        await agent.until(lambda: "ModelDamaged" in agent.backend.reasons(), "damage seen")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded"
                          and weights.stat().st_size == 199_936, "fetched again")

    asyncio.run(scenario())


def test_a_model_larger_than_its_declared_size_is_refused(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")
    agent.backend.declared["llama"] = 1000

    async def scenario() -> None:
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloadError", "refused")

    asyncio.run(scenario())
    assert agent.backend.status["modelDetails"]["llama"]["reason"] == "ModelSizeExceeded"
