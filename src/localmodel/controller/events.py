"""Records Kubernetes Events (events.k8s.io/v1) about caches.

Events of a LocalModelNamespaceCache go to its namespace; those of a cluster-scoped
LocalModelCache to `default`, where `kubectl describe` and `kubectl events` look for them. An
Event is a courtesy: a failure to write one is logged and never fails a reconcile. Each Event is
also a log line, the durable record (Events expire after an hour).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.events_v1 import Event

from localmodel.controller.metrics import ControllerMetrics
from localmodel.controller.plan_events import WARNING, CacheEvent
from localmodel.controller.views import Cache

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "serving.kserve.io/localmodel-controller"
CLUSTER_EVENT_NAMESPACE = "default"
API_VERSION = "serving.kserve.io/v1alpha1"
_NOTE_LIMIT = 1024


class EventRecorder:
    def __init__(self, client: AsyncClient, identity: str, metrics: ControllerMetrics) -> None:
        self.client = client
        self.instance = identity[:128]
        self.metrics = metrics

    async def record(self, cache: Cache, event: CacheEvent) -> None:
        ref = cache.ref
        level = logging.WARNING if event.type == WARNING else logging.INFO
        log.log(level, "%s %s: %s: %s", ref.kind, ref, event.reason, event.message)
        note = event.message if len(event.message) <= _NOTE_LIMIT else event.message[: _NOTE_LIMIT - 1] + "…"
        namespace = ref.namespace or CLUSTER_EVENT_NAMESPACE
        body = Event(
            metadata=ObjectMeta(name=f"{ref.name}.{secrets.token_hex(8)}", namespace=namespace),
            eventTime=datetime.now(timezone.utc),
            action=event.reason,
            reason=event.reason,
            type=event.type,
            note=note,
            regarding=ObjectReference(apiVersion=API_VERSION, kind=ref.kind, name=ref.name,
                                      namespace=ref.namespace or None, uid=cache.uid or None),
            reportingController=REPORTING_CONTROLLER,
            reportingInstance=self.instance,
        )
        try:
            await self.client.create(body)
        except ApiError as error:
            log.warning("could not record Event %s for %s %s: %s", event.reason, ref.kind, ref,
                        error.status.message)
            return
        except Exception as error:  # noqa: BLE001 - an Event is never worth failing a reconcile
            log.warning("could not record Event %s for %s %s: %s", event.reason, ref.kind, ref, error)
            return
        self.metrics.events.labels(event.reason).inc()
