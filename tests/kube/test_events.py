"""The Event both programs write (kube/events.py), without an apiserver; the agent's and the
controller's Events are read back from a real one in tests/node and tests/controller."""

from __future__ import annotations

import asyncio
from typing import Any

from lightkube.models.core_v1 import ObjectReference

from localmodel.kube import events


def test_a_cluster_scoped_object_gets_its_events_in_default_with_a_short_note() -> None:
    recorder = events.EventRecorder(client=None, controller="serving.kserve.io/x", instance="i" * 200)  # type: ignore[arg-type]
    regarding = ObjectReference(apiVersion="serving.kserve.io/v1alpha1", kind="LocalModelNode", name="node-1")
    event = recorder.event(regarding, "Warning", "DownloadFailed", "x" * 5000)
    assert event.metadata is not None and event.metadata.namespace == "default"
    assert (event.metadata.name or "").startswith("node-1.")
    assert event.note is not None and len(event.note) == events.NOTE_LIMIT and event.note.endswith("…")
    assert (event.reason, event.action, event.type) == ("DownloadFailed", "DownloadFailed", "Warning")
    assert event.reportingController == "serving.kserve.io/x" and event.reportingInstance == "i" * 128


def test_a_namespaced_object_gets_its_events_in_its_namespace() -> None:
    created: list[Any] = []

    class Client:
        async def create(self, obj: Any) -> None:
            created.append(obj)

    recorder = events.EventRecorder(Client(), "c", "i")  # type: ignore[arg-type]
    regarding = ObjectReference(kind="LocalModelNamespaceCache", name="m", namespace="team-a")
    asyncio.run(recorder.record(regarding, "Normal", "CopiesComplete", "2/2"))
    assert created[0].metadata.namespace == "team-a" and created[0].note == "2/2"
