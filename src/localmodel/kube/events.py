"""Kubernetes Events (events.k8s.io/v1), written the same way by the agent (about its
LocalModelNode) and the controller (about caches).

Events of cluster-scoped objects go to `default`, where `kubectl describe` and `kubectl events`
look for them. Notes are cut to the API's 1 KiB. Writing raises like any API call: whether a
failed Event matters is the caller's choice (neither the agent nor the controller fails a pass
for one).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from lightkube import AsyncClient
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.events_v1 import Event

#: Where Events about cluster-scoped objects are kept.
CLUSTER_EVENT_NAMESPACE = "default"
NOTE_LIMIT = 1024


def note(message: str) -> str:
    """The message as an Event note: at most NOTE_LIMIT characters, cut with an ellipsis."""
    return message if len(message) <= NOTE_LIMIT else message[: NOTE_LIMIT - 1] + "…"


class EventRecorder:
    """Creates Events as one reporting controller and instance."""

    def __init__(self, client: AsyncClient, controller: str, instance: str) -> None:
        self.client = client
        self.controller = controller
        self.instance = instance[:128]

    def event(self, regarding: ObjectReference, type_: str, reason: str, message: str) -> Event:
        """The Event about `regarding`, named after it and kept in its namespace (else `default`)."""
        return Event(
            metadata=ObjectMeta(name=f"{regarding.name}.{secrets.token_hex(8)}",
                                namespace=regarding.namespace or CLUSTER_EVENT_NAMESPACE),
            eventTime=datetime.now(timezone.utc),
            action=reason,
            reason=reason,
            type=type_,
            note=note(message),
            regarding=regarding,
            reportingController=self.controller,
            reportingInstance=self.instance,
        )

    async def record(self, regarding: ObjectReference, type_: str, reason: str, message: str) -> None:
        await self.client.create(self.event(regarding, type_, reason, message))
