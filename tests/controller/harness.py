"""Test harness: the controller running in-process against the session's real apiserver.

The Manager runs on its own asyncio loop in a background thread; tests talk to the apiserver with
lightkube's sync client and poll with generous deadlines (never fixed sleeps).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, NodeStatus
from lightkube.types import PatchType

from localmodel.controller.manager import Manager, Settings
from localmodel.kube import resources
from localmodel.kube.client import async_client

from .factories import cache_obj, group_obj

T = TypeVar("T")
DEADLINE = 90.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(check: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
    """Poll `check` until it returns something truthy (or stops raising AssertionError)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except (AssertionError, ApiError, KeyError) as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.2)


def absent(get: Callable[[], Any]) -> bool:
    try:
        get()
    except ApiError as error:
        if error.status.code == 404:
            return True
        raise
    return False


class RunningController:
    """A Manager on a private event loop in a daemon thread."""

    def __init__(self, kubeconfig: Path, settings: Settings) -> None:
        self.kubeconfig = kubeconfig
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.manager: Manager | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"controller-{settings.identity}")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            client = async_client(str(self.kubeconfig), field_manager="localmodel-controller")
            self.manager = Manager(client, self.settings)
            self._task = asyncio.current_task()
            self._started.set()
            try:
                await self.manager.run()
            finally:
                await client.close()

        try:
            self.loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass

    def start(self) -> RunningController:
        self._thread.start()
        self._started.wait(30)
        assert self.manager is not None
        wait_for(lambda: self.manager is not None and self.manager.ready.is_set(), "controller caches synced")
        if self.settings.webhook_cert_dir is not None:
            wait_for(lambda: self.manager.webhook_port, "webhook server")  # type: ignore[union-attr]
        return self

    def stop(self) -> None:
        if self._task is not None:
            self.loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)

    @property
    def is_leader(self) -> bool:
        return bool(self.manager and self.manager.elector.is_leader)


# --- object helpers ----------------------------------------------------------------------------

def create_namespace(client: Client, name: str) -> str:
    try:
        client.create(Namespace(metadata=ObjectMeta(name=name)))
    except ApiError as error:
        if error.status.code != 409:
            raise
    return name


def create_node(client: Client, name: str, labels: dict[str, str], ready: bool = True) -> None:
    client.create(Node(metadata=ObjectMeta(name=name, labels=labels)))
    set_ready(client, name, ready)


def set_ready(client: Client, name: str, ready: bool) -> None:
    condition = {"type": "Ready", "status": "True" if ready else "False", "reason": "Test",
                 "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    client.patch(NodeStatus, name, {"status": {"conditions": [condition]}}, patch_type=PatchType.STRATEGIC)


def label_node(client: Client, name: str, labels: dict[str, str | None]) -> None:
    client.patch(Node, name, {"metadata": {"labels": labels}}, patch_type=PatchType.MERGE)


def create_group(client: Client, name: str, *, label: str = "pool", value: str | None = None,
                 limit: str = "100Gi") -> None:
    client.create(resources.LocalModelNodeGroup(group_obj(name, label=label, value=value, limit=limit)))


def create_cache(client: Client, name: str, uri: str, groups: list[str], *, namespace: str = "",
                 size: str = "1Gi", **spec: Any) -> None:
    body = cache_obj(name, uri, groups, namespace=namespace, size=size, **spec)
    del body["metadata"]["uid"]
    res = resources.LocalModelNamespaceCache if namespace else resources.LocalModelCache
    client.create(res(body), namespace=namespace or None)


def get_cache(client: Client, name: str, namespace: str = "") -> dict[str, Any]:
    if namespace:
        return dict(client.get(resources.LocalModelNamespaceCache, name, namespace=namespace))
    return dict(client.get(resources.LocalModelCache, name))


def cache_status(client: Client, name: str, namespace: str = "") -> dict[str, Any]:
    return get_cache(client, name, namespace).get("status") or {}


def lmn_entries(client: Client, node: str) -> list[dict[str, Any]]:
    return (client.get(resources.LocalModelNode, node).get("spec") or {}).get("localModels") or []


def lmn_models(client: Client, node: str) -> set[str]:
    """status keys (`name` / `ns/name`) listed on a node."""
    try:
        entries = lmn_entries(client, node)
    except ApiError as error:
        if error.status.code == 404:
            return set()
        raise
    return {f"{e['namespace']}/{e['modelName']}" if e.get("namespace") else e["modelName"] for e in entries}


def report_model(client: Client, node: str, statuses: dict[str, str], **extra: Any) -> None:
    """Do what an agent does: write the node's LocalModelNode status."""
    client.patch(resources.LocalModelNode.Status, node,
                 {"status": {"modelStatus": statuses, **extra}}, patch_type=PatchType.MERGE)


def node_labels(client: Client, node: str) -> dict[str, str]:
    return dict(client.get(Node, node).metadata.labels or {})


def deleted(get: Callable[[], Any]) -> bool:
    """Gone, or deletion requested: PVs and PVCs keep their protection finalizers here because no
    pv/pvc-protection controller runs in the test control plane."""
    try:
        obj = get()
    except ApiError as error:
        if error.status.code == 404:
            return True
        raise
    meta = obj.metadata if hasattr(obj, "metadata") and not isinstance(obj, dict) else None
    if meta is not None:
        return meta.deletionTimestamp is not None
    return bool(obj["metadata"].get("deletionTimestamp"))


# Events read as plain dicts: lightkube's typed events.k8s.io Event refuses an item whose
# eventTime is null, which is what core/v1 Events written by other components look like there.
RawEvent = create_namespaced_resource("events.k8s.io", "v1", "Event", "events")


def events_about(client: Client, name: str, namespace: str = "default",
                 kinds: tuple[str, ...] = ("LocalModelCache", "LocalModelNamespaceCache")) -> list[dict[str, Any]]:
    """Events (events.k8s.io/v1) regarding the object `name` of one of `kinds`."""
    found = []
    for event in client.list(RawEvent, namespace=namespace):
        regarding = event.get("regarding") or {}
        if regarding.get("name") == name and regarding.get("kind") in kinds:
            found.append({"reason": event.get("reason"), "type": event.get("type"), "note": event.get("note"),
                          "controller": event.get("reportingController")})
    return found
