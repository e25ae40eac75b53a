"""Records Kubernetes Events (events.k8s.io/v1) about caches.

Events of a LocalModelNamespaceCache go to its namespace; those of a cluster-scoped
LocalModelCache to `default`, where `kubectl describe` and `kubectl events` look for them. An
Event is a courtesy: a failure to write one is logged and never fails a reconcile. Each Event is
also a log line, the durable record (Events expire after an hour).
"""

from __future__ import annotations

import logging

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import ObjectReference

from localmodel.controller.metrics import ControllerMetrics
from localmodel.controller.plan_events import WARNING, CacheEvent
from localmodel.controller.views import Cache
from localmodel.kube import events

log = logging.getLogger(__name__)

REPORTING_CONTROLLER = "serving.kserve.io/localmodel-controller"
API_VERSION = "serving.kserve.io/v1alpha1"


class EventRecorder:
    def __init__(self, client: AsyncClient, identity: str, metrics: ControllerMetrics) -> None:
        self.events = events.EventRecorder(client, REPORTING_CONTROLLER, identity)
        self.metrics = metrics

    async def record(self, cache: Cache, event: CacheEvent) -> None:
        ref = cache.ref
        level = logging.WARNING if event.type == WARNING else logging.INFO
        log.log(level, "%s %s: %s: %s", ref.kind, ref, event.reason, event.message)
        regarding = ObjectReference(apiVersion=API_VERSION, kind=ref.kind, name=ref.name,
                                    namespace=ref.namespace or None, uid=cache.uid or None)
        try:
            await self.events.record(regarding, event.type, event.reason, event.message)
        except ApiError as error:
            log.warning("could not record Event %s for %s %s: %s", event.reason, ref.kind, ref,
                        error.status.message)
            return
        except Exception as error:  # noqa: BLE001 - an Event is never worth failing a reconcile
            log.warning("could not record Event %s for %s %s: %s", event.reason, ref.kind, ref, error)
            return
        self.metrics.events.labels(event.reason).inc()
