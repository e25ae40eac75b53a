"""AgentMemory's pure steps (node/memory.py), without disk or jobs: each returns a new value and
leaves the one it was given as it was."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from localmodel.api.types import LocalModelInfo
from localmodel.node.backend import Desired
from localmodel.node.memory import AgentMemory
from localmodel.node.plan import DiskState, Observed, Record, record_after_observation, wanted_models

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
URI = "s3://bucket/llama"


def remembering_llama() -> tuple[AgentMemory, str]:
    wanted, _ = wanted_models([LocalModelInfo(source_model_uri=URI, model_name="llama")])
    (key,) = wanted
    return AgentMemory().loaded(Desired(entries=(), generation=1), wanted, NOW), key


def test_a_present_model_found_damaged_is_remembered_damaged_with_one_event() -> None:
    memory, key = remembering_llama()
    present = memory.disk_seen({key: Observed(DiskState.PRESENT, uri=URI, bytes_total=10)}, [key])
    assert present.pending_events == () and present.record(key) == Record()

    damaged_seen = Observed(DiskState.DAMAGED, uri=URI, problem="weights.bin: 3 bytes, expected 10")
    damaged = present.disk_seen({key: damaged_seen}, [key])
    assert damaged.record(key) == record_after_observation(Record(), damaged_seen)
    assert (damaged.record(key).reason, damaged.record(key).message) == ("Damaged", damaged_seen.problem)
    assert [(e.reason, e.models) for e in damaged.pending_events] == [("ModelDamaged", ("llama",))]
    assert present.observed[key].state is DiskState.PRESENT  # the earlier value is unchanged

    after_act, events = damaged.take_pending_events()
    assert events == damaged.pending_events and after_act.pending_events == ()
    # Still damaged at the next look (no event: it was not present before).
    assert after_act.disk_seen({key: damaged_seen}, [key]).pending_events == ()


def test_failures_count_up_and_a_success_forgets_them() -> None:
    memory, key = remembering_llama()
    once = memory.download_queued(key, "no credentials found").failed(
        key, "Forbidden", "403", retry_at=NOW + timedelta(seconds=10), started_at=NOW)
    twice = once.failed(key, "Forbidden", "403", retry_at=NOW + timedelta(seconds=30))
    assert (once.record(key).failures, twice.record(key).failures) == (1, 2)
    assert twice.record(key).started_at == NOW and twice.record(key).warning == "no credentials found"
    assert memory.record(key) == Record()

    forgotten = twice.deleted(key)
    assert key not in forgotten.records and key in twice.records


def test_alias_refusals_are_reported_once_while_they_last() -> None:
    memory = AgentMemory()
    memory, new = memory.aliases_refused(["a", "b"])
    assert new == ["a", "b"]
    memory, new = memory.aliases_refused(["b"])
    assert new == []
    memory, new = memory.aliases_refused(["a", "b"])
    assert new == ["a"]
