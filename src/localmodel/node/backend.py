"""Where the agent's wishes come from and where its status goes: the seam between the
reconcile logic and Kubernetes (`cluster`) or a manifest file (`standalone`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from localmodel.api.types import LocalModelInfo
from localmodel.node.credentials import Credentials
from localmodel.node.plan import WantedModel


@dataclass(frozen=True)
class Desired:
    """The node's wishes as of one read."""

    entries: tuple[LocalModelInfo, ...]
    #: metadata.generation of the LocalModelNode (None in standalone mode).
    generation: int | None = None
    #: `.status` as stored (for diffing); None when the backend keeps none.
    status: Mapping[str, Any] | None = None
    #: Seconds between level-triggered passes (`reconcilationFrequencyInSecs`).
    resync_seconds: float = 60.0
    #: Problems worth a warning (bad ConfigMap, unreadable manifest entry...).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Budgets:
    """Capacity facts about one model, read from the cluster when available."""

    declared_bytes: int | None = None
    group_limits: Mapping[str, int | None] = field(default_factory=dict)
    #: The node directory each group's PersistentVolume mounts (None: not known).
    group_paths: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentEvent:
    """A Kubernetes Event about the node's LocalModelNode (or a log line in standalone mode)."""

    type: str  # "Normal" or "Warning"
    reason: str
    message: str
    #: The status keys it concerns.
    models: tuple[str, ...] = ()


class Backend(Protocol):
    async def start(self, wake: Callable[[], None]) -> None:
        """Begin watching for changes; call `wake()` whenever the wishes may have changed."""
        ...

    async def load(self) -> Desired | None:
        """The current wishes, or None when there is no LocalModelNode for this node."""
        ...

    async def credentials(self, model: WantedModel) -> Credentials:
        """Download settings for a model (raises a LocalModelError when they cannot be read)."""
        ...

    async def budgets(self, model: WantedModel) -> Budgets:
        ...

    async def write_status(self, patch: Mapping[str, Any], full: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Apply `patch` to `.status`; return the status as stored afterwards, when known."""
        ...

    async def emit(self, event: AgentEvent) -> None:
        ...

    async def close(self) -> None:
        ...
