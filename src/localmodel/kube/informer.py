"""List-then-watch caches of API objects (client-go's informer, small).

Each informer lists once, then watches from the list's resourceVersion, restarting the watch
from the last version it saw when the stream ends or breaks. A 410 Gone (version too old) makes it
list again; objects that vanished meanwhile are reported deleted, so handlers stay level-correct.
Objects are stored as raw dicts keyed by (namespace, name). A resource whose API is not served
(its CRD not installed) reads as empty and is retried every `absent_retry` seconds, unless the
informer is not `optional` (the agent's own LocalModelNode): then that is an error like others.

The controller runs one per kind it watches; the agent one for its own LocalModelNode (field
selector), starting from a resourceVersion it already has when given `resume_from`. `on_sync`
runs after every list and `on_error` after every failed attempt's pause, for a program that
reacts to those rather than to object events (the agent runs a pass).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from lightkube import AsyncClient

from localmodel.backoff import exponential_delay
from localmodel.kube.client import status_code

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]
#: Longest wait between attempts to reconnect a broken watch (connection refused, reset...).
RECONNECT_MAX_SECONDS = 4.0
Handler = Callable[[str, "dict[str, Any] | None", "dict[str, Any] | None"], None]
"""handler(event, old, new): event is ADDED, MODIFIED or DELETED; old/new raw objects or None."""
IndexFunc = Callable[[dict[str, Any]], Iterable[Hashable]]
"""The values an object is found under in one index (client-go's IndexFunc)."""


def _raw(obj: Any) -> dict[str, Any]:
    """A plain dict without `metadata.managedFields`: nothing here reads them, and at 1000 nodes
    they are a large share of every stored LocalModelNode and cache (client-go strips them too)."""
    raw = dict(obj) if isinstance(obj, dict) else obj.to_dict()  # lightkube model
    meta = raw.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        raw["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    return raw


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name", ""))


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class Informer:
    def __init__(
        self,
        client: AsyncClient,
        resource: Any,
        *,
        name: str,
        namespace: str | None = None,
        labels: Mapping[str, Any] | None = None,
        fields: Mapping[str, Any] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        absent_retry: float = 30.0,
        watch_timeout: int = 300,
        optional: bool = True,
        resume_from: str | None = None,
        error_backoff: tuple[float, float] = (0.5, 30.0),
        on_sync: Callable[[], None] | None = None,
        on_error: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._labels = labels
        self._fields = fields
        self._transform = transform or (lambda obj: obj)
        self._absent_retry = absent_retry
        self._watch_timeout = watch_timeout
        self._optional = optional
        self._resume_from = resume_from
        #: (base, cap) of the pause after an error that is not a broken connection (403, 404...).
        self._error_backoff = error_backoff
        self._on_sync = on_sync or (lambda: None)
        self._on_error = on_error or (lambda: None)
        self._handlers: list[Handler] = []
        self.store: dict[ObjectKey, dict[str, Any]] = {}
        self._index_funcs: dict[str, IndexFunc] = {}
        #: index name -> value -> keys of the objects found under it
        self._indexes: dict[str, dict[Hashable, set[ObjectKey]]] = {}
        self.synced = asyncio.Event()
        self.served = False  # False while the API (e.g. an optional CRD) is not installed
        self.relists = 0

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, name: str, namespace: str = "") -> dict[str, Any] | None:
        return self.store.get((namespace, name))

    def add_index(self, name: str, values_of: IndexFunc) -> None:
        """Keep the objects findable by `values_of(obj)` (e.g. a cache by each of its node
        groups); updated before handlers run, so they can read it."""
        self._index_funcs[name] = values_of
        self._indexes[name] = {}
        for key, obj in self.store.items():
            self._reindex(key, None, obj, only=name)

    def keys_by_index(self, name: str, value: Hashable) -> set[ObjectKey]:
        """Keys of the objects `value` finds in index `name`."""
        return set(self._indexes[name].get(value, ()))

    def by_index(self, name: str, value: Hashable) -> list[dict[str, Any]]:
        """The objects `value` finds in index `name`, in key order."""
        return [self.store[key] for key in sorted(self._indexes[name].get(value, ()))]

    def _reindex(self, key: ObjectKey, old: dict[str, Any] | None, new: dict[str, Any] | None,
                 only: str | None = None) -> None:
        for name, values_of in self._index_funcs.items():
            if only is not None and name != only:
                continue
            index = self._indexes[name]
            before = set(values_of(old)) if old is not None else set()
            after = set(values_of(new)) if new is not None else set()
            for value in before - after:
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]
            for value in after - before:
                index.setdefault(value, set()).add(key)

    def _emit(self, event: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        for handler in self._handlers:
            try:
                handler(event, old, new)
            except Exception:  # a handler bug must not kill the watch
                log.exception("informer %s: handler failed on %s", self.name, event)

    def _apply(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        old = self.store.get(key)
        if event == "DELETED":
            if old is not None:
                del self.store[key]
                self._reindex(key, old, None)
                self._emit("DELETED", old, None)
            return
        if old is not None and _rv(old) > _rv(obj) > 0:
            return  # we already hold something newer (written through after our own update)
        self.store[key] = obj
        self._reindex(key, old, obj)
        self._emit("ADDED" if old is None else "MODIFIED", old, obj)

    def write_through(self, obj: Any) -> None:
        """Store an object our own write returned, so the next reconcile does not read stale data."""
        raw = self._transform(_raw(obj))
        old = self.store.get(object_key(raw))
        if old is None or _rv(raw) > _rv(old):
            self._apply("MODIFIED", raw)

    async def _list(self) -> str:
        listing = self._client.list(self._resource, namespace=self._namespace, labels=self._labels,
                                    fields=self._fields, chunk_size=500)
        fresh: dict[ObjectKey, dict[str, Any]] = {}
        async for item in listing:
            raw = self._transform(_raw(item))
            fresh[object_key(raw)] = raw
        for key in [k for k in self.store if k not in fresh]:
            gone = self.store.pop(key)
            self._reindex(key, gone, None)
            self._emit("DELETED", gone, None)
        for key, raw in fresh.items():
            self._apply("MODIFIED" if key in self.store else "ADDED", raw)
        self.relists += 1
        return listing.resourceVersion

    async def run(self) -> None:
        version: str | None = self._resume_from
        failures = 0
        unreachable = False  # the last attempt got no answer at all (connection refused, reset)
        while True:
            try:
                if version is None:
                    version = await self._list()
                    self.served = True
                    self.synced.set()
                    failures, unreachable = 0, False  # the apiserver answers again: backoff starts over
                    self._on_sync()
                async for event, obj in self._client.watch(
                    self._resource, namespace=self._namespace, labels=self._labels, fields=self._fields,
                    resource_version=version, server_timeout=self._watch_timeout,
                ):
                    raw = self._transform(_raw(obj))
                    version = (raw.get("metadata") or {}).get("resourceVersion") or version
                    if event in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(event, raw)
                    failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                code = status_code(error)
                if code is None or code == 429 or code >= 500:
                    # Connection reset, read timeout, apiserver restart; or an apiserver still
                    # starting (CRD paths answer 503 for a moment after it comes back).
                    if unreachable and code is not None:
                        failures = 0  # it answers again: a short pause, not the outage's longest
                    unreachable = code is None
                    failures += 1
                    log.info("informer %s: watch broke (%s), resuming", self.name,
                             error.__class__.__name__ if code is None else f"HTTP {code}")
                    # Capped low: a reconnect is one cheap request per informer, and after a
                    # 30 s apiserver outage a 30 s cap left the controller blind for 20-30 s more.
                    await asyncio.sleep(exponential_delay(failures, base=0.2, cap=RECONNECT_MAX_SECONDS))
                    self._on_error()
                    continue
                if code == 410:
                    log.info("informer %s: watch expired (410 Gone), listing again", self.name)
                    version = None
                    continue
                if code in (404, 403) and not self.served and self._optional:
                    # optional API missing (or not allowed): read as empty, look again later
                    self.synced.set()
                    await asyncio.sleep(self._absent_retry)
                    continue
                failures += 1
                log.warning("informer %s: %s, retrying", self.name, error)
                if code == 404:
                    version = None
                base, cap = self._error_backoff
                await asyncio.sleep(exponential_delay(failures, base=base, cap=cap))
                self._on_error()


