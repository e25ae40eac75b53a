"""A Backend held in memory, for running the agent's Reconciler in process: the wishes are a
list the test edits, status is a dict, Events a list. The subprocess tests (test_standalone,
test_cluster_agent) stay for the real thing."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from localmodel.api.types import LocalModelInfo
from localmodel.node.backend import AgentEvent, Desired
from localmodel.node.capacity import Budgets
from localmodel.node.credentials import Credentials
from localmodel.node.plan import WantedModel


class MemoryBackend:
    def __init__(self, *, generation: int = 1) -> None:
        self.entries: list[LocalModelInfo] = []
        self.generation = generation
        self.status: dict[str, Any] = {}
        self.events: list[AgentEvent] = []
        self.declared: dict[str, int] = {}
        self._wake: Callable[[], None] = lambda: None

    def want(self, uri: str, name: str) -> None:
        self.entries.append(LocalModelInfo(source_model_uri=uri, model_name=name))
        self.generation += 1
        self._wake()

    def drop(self, name: str) -> None:
        self.entries = [e for e in self.entries if e.model_name != name]
        self.generation += 1
        self._wake()

    def reasons(self) -> list[str]:
        return [event.reason for event in self.events]

    async def start(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    async def load(self) -> Desired | None:
        return Desired(entries=tuple(self.entries), generation=self.generation,
                       status=json.loads(json.dumps(self.status)))

    async def credentials(self, model: WantedModel) -> Credentials:
        return Credentials()

    async def budgets(self, model: WantedModel) -> Budgets:
        declared = [self.declared[k] for k in model.status_keys if k in self.declared]
        return Budgets(declared_bytes=max(declared) if declared else None)

    async def write_status(self, patch: Mapping[str, Any], full: Mapping[str, Any]) -> Mapping[str, Any] | None:
        self.status = json.loads(json.dumps(full))
        return self.status

    async def emit(self, event: AgentEvent) -> None:
        self.events.append(event)

    async def close(self) -> None:
        return None
