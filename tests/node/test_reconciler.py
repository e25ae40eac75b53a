"""The agent's Reconciler in process, over a MemoryBackend, a real ModelStore on a temporary
root and the real download pool: passes are driven by hand, so each step is seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from localmodel.fetch.options import FetchOptions
from localmodel.node.downloads import Jobs
from localmodel.node.memory import AgentMemory
from localmodel.node.metrics import AgentMetrics
from localmodel.node.plan import DiskState
from localmodel.node.reconcile import Reconciler
from localmodel.node.settings import AgentSettings, DownloadSettings
from localmodel.node.store import ModelStore
from tests.node.memory_backend import MemoryBackend


def origin(folder: Path, size: int = 200_000) -> str:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * (size // 256))
    return str(folder)


class Clock:
    """The reconciler's time, moved by hand (backoffs are waited out without sleeping)."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Agent:
    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.backend = MemoryBackend()
        self.store = ModelStore(root)
        settings = AgentSettings(root=root, node_name="node-a",
                                 downloads=DownloadSettings(allow_local_sources=True, reserve_bytes=0))
        self.jobs = Jobs(self.store, max_concurrent=2, options=FetchOptions())
        # draw=0.5: backoffs without jitter (10 s after the first failure, 20 s after the second).
        self.reconciler = Reconciler(settings, self.backend, self.store, self.jobs, AgentMetrics(),
                                     clock=self.clock, draw=lambda: 0.5)

    @property
    def memory(self) -> AgentMemory:
        return self.reconciler.memory

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


# --- the memory value across passes ----------------------------------------------------------------


def test_a_failure_is_remembered_backed_off_and_retried_until_it_succeeds(agent: Agent, tmp_path: Path) -> None:
    folder = tmp_path / "origin"
    key = storage_key(str(folder))

    async def scenario() -> None:
        agent.backend.want(str(folder), "llama")  # the origin folder does not exist yet
        await agent.until(lambda: agent.memory.record(key).failures == 1, "first failure")
        first = agent.memory
        record = first.record(key)
        assert record.retry_at == agent.clock.now + timedelta(seconds=10)
        assert agent.model_status("llama") == "ModelDownloadError"
        assert agent.backend.status["modelDetails"]["llama"]["reason"] == record.reason

        # Within the backoff a pass starts nothing and remembers the same record.
        agent.clock.advance(9)
        await agent.reconciler.full_pass()
        assert agent.jobs.views() == {}
        assert agent.memory is not first and agent.memory.record(key) == record

        # Past it, the download is tried again and fails again: the backoff doubles.
        agent.clock.advance(2)
        await agent.until(lambda: agent.memory.record(key).failures == 2, "second failure")
        assert agent.memory.record(key).retry_at == agent.clock.now + timedelta(seconds=20)
        # The value of the earlier pass is untouched: memory is replaced, never changed.
        assert first.record(key) == record

        origin(folder)
        agent.clock.advance(21)
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "retried and downloaded")

    asyncio.run(scenario())
    done = agent.memory.record(key)
    assert (done.failures, done.reason, done.retry_at) == (0, None, None)
    assert done.finished_at is not None and agent.memory.scrubbed[key] == done.finished_at
    assert agent.backend.reasons().count("DownloadFailed") == 2


def test_damage_is_remembered_while_the_model_is_fetched_again(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")
    key = storage_key(uri)
    weights = agent.store.layout(key).dest / "sub" / "weights.bin"

    async def scenario() -> None:
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "downloaded")
        await agent.reconciler.full_pass()
        healthy = agent.memory
        assert healthy.observed[key].state is DiskState.PRESENT

        with open(weights, "r+b") as handle:
            handle.truncate(1000)
        await agent.reconciler.full_pass()
        damaged = agent.memory
        assert damaged.observed[key].state is DiskState.DAMAGED
        assert damaged.record(key).reason == "Damaged"
        assert damaged.record(key).message == damaged.observed[key].problem
        # The ModelDamaged Event was decided while observing and sent in the same pass.
        assert damaged.pending_events == ()
        assert agent.backend.reasons().count("ModelDamaged") == 1

        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded"
                          and agent.memory.observed.get(key, damaged.observed[key]).state is DiskState.PRESENT,
                          "fetched again and seen intact")
        # The pass that saw the damage still holds what it saw.
        assert damaged.observed[key].state is DiskState.DAMAGED and healthy.record(key).reason is None

    asyncio.run(scenario())
    assert agent.memory.record(key).reason is None
    assert weights.stat().st_size == 199_936
    assert agent.backend.reasons().count("ModelDamaged") == 1


def test_a_model_removed_from_the_spec_leaves_nothing_in_memory(agent: Agent, tmp_path: Path) -> None:
    kept_uri = origin(tmp_path / "kept")
    dropped_uri = origin(tmp_path / "dropped", size=50_000)
    kept, dropped = storage_key(kept_uri), storage_key(dropped_uri)

    async def scenario() -> None:
        agent.backend.want(kept_uri, "kept")
        agent.backend.want(dropped_uri, "dropped")
        await agent.until(lambda: agent.model_status("kept") == agent.model_status("dropped") == "ModelDownloaded",
                          "both downloaded")
        await agent.reconciler.full_pass()
        assert {kept, dropped} <= set(agent.memory.records) & set(agent.memory.scrubbed) & set(agent.memory.observed)
        agent.backend.drop("dropped")
        await agent.until(lambda: "ModelDeleted" in agent.backend.reasons(), "deleted")
        # The pass that deleted the folder forgot its records and scrub time with it...
        at_deletion = agent.memory
        assert dropped not in at_deletion.wanted and dropped not in at_deletion.observed
        assert dropped not in at_deletion.records and dropped not in at_deletion.scrubbed
        assert dropped in at_deletion.on_disk  # what that pass saw before it deleted
        # ...and the next look at the disk no longer finds it.
        await agent.reconciler.full_pass()

    asyncio.run(scenario())
    memory = agent.memory
    assert dropped not in memory.on_disk and dropped not in memory.records
    assert dropped not in memory.announced and dropped not in memory.progress_logged
    assert kept in memory.records and memory.observed[kept].state is DiskState.PRESENT


def test_the_memory_value_cannot_be_changed_in_place(agent: Agent, tmp_path: Path) -> None:
    uri = origin(tmp_path / "origin")

    async def scenario() -> None:
        agent.backend.want(uri, "llama")
        await agent.until(lambda: agent.model_status("llama") == "ModelDownloaded", "downloaded")

    asyncio.run(scenario())
    memory = agent.memory
    with pytest.raises(FrozenInstanceError):
        memory.records = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        memory.records[storage_key(uri)] = memory.record("other")  # type: ignore[index]
    with pytest.raises(TypeError):
        memory.server_status["modelStatus"] = {}  # type: ignore[index]
