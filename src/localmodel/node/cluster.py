"""The Kubernetes side of the agent: its own LocalModelNode, the ConfigMap, credentials, budgets,
status patches and Events, through lightkube.

The agent watches ONE object: a list+watch with the server-side field selector
`metadata.name=$NODE_NAME`, so its watch traffic does not grow with the cluster (KServe's agent
watches every LocalModelNode and drops the others). A watch that expires (410 Gone) is
re-listed; other errors back off up to 5 s. The watch only wakes the reconciler: every pass
reads the object afresh (level-triggered), so a missed event costs at most one resync period.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Secret, ServiceAccount
from lightkube.resources.events_v1 import Event
from lightkube.types import PatchType

from localmodel.api.quantity import parse_quantity
from localmodel.api.types import API_VERSION, LocalModelInfo
from localmodel.errors import CredentialsConfigError
from localmodel.kube import resources
from localmodel.kube.client import status_code
from localmodel.kube.config import (
    CONFIGMAP_NAME,
    ConfigError,
    CredentialsConfig,
    LocalModelConfig,
    parse_credentials_config,
    parse_local_model_config,
)
from localmodel.node.backend import AgentEvent, Budgets, Desired
from localmodel.node.credentials import (
    NO_CREDENTIALS,
    Credentials,
    SecretData,
    from_service_account,
    from_storage_spec,
    plan_credentials,
)
from localmodel.node.hostpath import group_volume_path
from localmodel.node.plan import WantedModel

logger = logging.getLogger(__name__)

REPORTING_CONTROLLER = "serving.kserve.io/localmodel-agent"
#: Cluster-scoped objects keep their Events in "default" (as kubectl describe expects).
EVENT_NAMESPACE = "default"
_NOTE_LIMIT = 1024
#: Longest wait between attempts to watch again after an error.
WATCH_RETRY_MAX_SECONDS = 5.0


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (data or {}).items():
        try:
            out[key] = base64.b64decode(value).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            continue  # binary values are no credential KServe understands
    return out


def _quantity_at(found: Mapping[str, Any] | None, path: tuple[str, ...]) -> int | None:
    """The quantity at `path` in an object as read, or None when absent or malformed."""
    value: Any = found
    for part in path:
        value = (value or {}).get(part)
    if value is None:
        return None
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def _is_not_found(exc: ApiError) -> bool:
    return exc.status.code == 404


def _trigger_state(obj: Any) -> dict[str, Any]:
    """What a change must touch to be worth a pass: the spec (generation) or annotations."""
    meta = obj.metadata
    return {"generation": meta.generation if meta else None, "annotations": meta.annotations if meta else None}


class ClusterBackend:
    """Backend for `localmodel agent` inside a cluster."""

    def __init__(self, client: AsyncClient, *, node_name: str, namespace: str,
                 resume_from: str | None = None) -> None:
        self.client = client
        self.node_name = node_name
        self.namespace = namespace
        self._config = LocalModelConfig()
        self._credentials_config = CredentialsConfig()
        self._config_ok = False
        self._uid: str | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        #: Start watching from this resourceVersion instead of listing first.
        self._resume_from = resume_from
        #: How many times the object was listed (once at start, again after each 410 Gone).
        self.lists = 0

    # --- watching -------------------------------------------------------------------------------

    async def start(self, wake: Callable[[], None]) -> None:
        self._watch_task = asyncio.create_task(self._watch(wake), name="watch-localmodelnode")

    async def _list(self, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        listing = self.client.list(resources.LocalModelNode, fields=fields)
        seen: dict[str, Any] = {}
        async for obj in listing:
            seen = _trigger_state(obj)
        return listing.resourceVersion, seen

    async def _watch(self, wake: Callable[[], None]) -> None:
        """List, then watch from the list's version; on 410 Gone list again; on any other
        error back off and watch again from the last version seen (informer style)."""
        fields: dict[str, Any] = {"metadata.name": self.node_name}
        version = self._resume_from
        seen: dict[str, Any] = {}
        delay = 1.0
        while True:
            try:
                if version is None:
                    version, seen = await self._list(fields)
                    self.lists += 1
                    delay = 1.0
                    wake()
                async for kind, obj in self.client.watch(
                    resources.LocalModelNode, fields=fields, resource_version=version
                ):
                    version = (obj.metadata.resourceVersion if obj.metadata else None) or version
                    current = _trigger_state(obj) if kind != "DELETED" else {}
                    # Our own status writes change neither generation nor annotations (A2).
                    if kind != "MODIFIED" or current != seen:
                        wake()
                    seen = current
                    delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - connection drops, timeouts, API errors
                if status_code(exc) == 410:  # Gone: as a watch ERROR event or the HTTP status
                    logger.info("watch expired (410 Gone); listing again")
                    version = None
                    continue
                logger.warning("watch failed", extra={"error": f"{exc.__class__.__name__}: {exc}",
                                                       "retry_in": delay})
                await asyncio.sleep(delay)
                # Capped low: a spec change made right after an apiserver outage must not wait
                # for a watch that sleeps 30 s (one cheap request per agent every few seconds).
                delay = min(delay * 2, WATCH_RETRY_MAX_SECONDS)
                wake()

    # --- reading --------------------------------------------------------------------------------

    async def _load_config(self) -> list[str]:
        """Refresh the ConfigMap settings; keep the last good ones on error (KServe errors out)."""
        try:
            cm = await self.client.get(ConfigMap, CONFIGMAP_NAME, namespace=self.namespace)
            self._config = parse_local_model_config(cm.data)
            self._credentials_config = parse_credentials_config(cm.data)
            self._config_ok = True
            return []
        except ApiError as exc:
            problem = f"ConfigMap {self.namespace}/{CONFIGMAP_NAME} unreadable ({exc.status.code})"
        except ConfigError as exc:
            problem = str(exc)
        kept = "the last good settings" if self._config_ok else "KServe's defaults"
        return [f"{problem}; using {kept}"]

    async def load(self) -> Desired | None:
        warnings = await self._load_config()
        try:
            obj = await self.client.get(resources.LocalModelNode, self.node_name)
        except ApiError as exc:
            if _is_not_found(exc):
                return None
            raise
        meta = obj.metadata
        self._uid = meta.uid if meta else None
        raw = obj.to_dict()
        spec = raw.get("spec") or {}
        entries: list[LocalModelInfo] = []
        for index, item in enumerate(spec.get("localModels") or []):
            try:
                entries.append(LocalModelInfo.model_validate(item))
            except ValueError as exc:
                warnings.append(f"spec.localModels[{index}] ignored: {exc}")
        return Desired(
            entries=tuple(entries),
            generation=meta.generation if meta else None,
            status=raw.get("status") or {},
            resync_seconds=float(max(1, self._config.reconciliation_frequency_seconds)),
            warnings=tuple(warnings),
        )

    # --- credentials ----------------------------------------------------------------------------

    async def _secret(self, name: str) -> SecretData | None:
        try:
            secret = await self.client.get(Secret, name, namespace=self._config.job_namespace)
        except ApiError as exc:
            if _is_not_found(exc):
                return None
            raise
        annotations = (secret.metadata.annotations if secret.metadata else None) or {}
        return SecretData(name=name, data=_decode(secret.data), annotations=dict(annotations))

    async def credentials(self, model: WantedModel) -> Credentials:
        plan = plan_credentials(model.first, self._credentials_config)
        namespace = self._config.job_namespace
        if plan.storage_key is not None:
            assert plan.storage_secret_name is not None
            secret = await self._secret(plan.storage_secret_name)
            if secret is None:
                raise CredentialsConfigError(
                    f"can't read storage secret {namespace}/{plan.storage_secret_name}: not found")
            return from_storage_spec(
                secret.data.get(plan.storage_key), secret_name=plan.storage_secret_name,
                storage_key=plan.storage_key, parameters=plan.parameters, uri=model.uri,
            )
        if plan.service_account is None:
            return NO_CREDENTIALS
        try:
            account = await self.client.get(ServiceAccount, plan.service_account, namespace=namespace)
        except ApiError as exc:
            if not _is_not_found(exc):
                raise
            # KServe logs this and downloads without credentials; so do we.
            self._warn_once(f"sa:{plan.service_account}",
                            f"ServiceAccount {namespace}/{plan.service_account} not found; "
                            "downloading without credentials")
            return NO_CREDENTIALS
        found: list[SecretData] = []
        for ref in account.secrets or []:
            if not ref.name:
                continue
            secret = await self._secret(ref.name)
            if secret is None:
                self._warn_once(f"secret:{ref.name}", f"secret {namespace}/{ref.name} listed by "
                                f"ServiceAccount {plan.service_account} not found")
                continue
            found.append(secret)
        annotations = (account.metadata.annotations if account.metadata else None) or {}
        return from_service_account(plan.service_account, dict(annotations), found, self._credentials_config)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    # --- budgets --------------------------------------------------------------------------------

    async def _read(self, resource: Any, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            if namespace:
                obj = await self.client.get(resource, name, namespace=namespace)
            else:
                obj = await self.client.get(resource, name)
        except ApiError as exc:
            if exc.status.code not in (403, 404):
                raise
            if exc.status.code == 403:
                self._warn_once(f"forbidden:{resource.__name__}",
                                f"not allowed to read {resource.__name__}; what it declares is not checked")
            return None
        found: dict[str, Any] = obj.to_dict()
        return found

    async def _quantity(self, resource: Any, name: str, path: tuple[str, ...], namespace: str | None = None
                        ) -> int | None:
        return _quantity_at(await self._read(resource, name, namespace), path)

    async def budgets(self, model: WantedModel) -> Budgets:
        limits: dict[str, int | None] = {}
        paths: dict[str, str | None] = {}
        for group in sorted(model.node_groups):
            found = await self._read(resources.LocalModelNodeGroup, group)
            limits[group] = _quantity_at(found, ("spec", "storageLimit"))
            paths[group] = group_volume_path(found)
        declared: list[int] = []
        for entry in model.entries:
            if entry.namespace:
                size = await self._quantity(resources.LocalModelNamespaceCache, entry.model_name,
                                            ("spec", "modelSize"), namespace=entry.namespace)
            else:
                size = await self._quantity(resources.LocalModelCache, entry.model_name, ("spec", "modelSize"))
            if size is not None:
                declared.append(size)
        return Budgets(declared_bytes=max(declared) if declared else None, group_limits=limits,
                       group_paths=paths)

    # --- writing --------------------------------------------------------------------------------

    async def write_status(self, patch: Mapping[str, Any], full: Mapping[str, Any]) -> Mapping[str, Any] | None:
        try:
            obj = await self.client.patch(
                resources.LocalModelNode.Status, self.node_name, {"status": dict(patch)},
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if _is_not_found(exc):
                return None
            raise
        return obj.to_dict().get("status") or {}

    async def emit(self, event: AgentEvent) -> None:
        now = datetime.now(timezone.utc)
        note = event.message if len(event.message) <= _NOTE_LIMIT else event.message[: _NOTE_LIMIT - 1] + "…"
        body = Event(
            metadata=ObjectMeta(name=f"{self.node_name}.{secrets.token_hex(8)}", namespace=EVENT_NAMESPACE),
            eventTime=now,
            action=event.reason,
            reason=event.reason,
            type=event.type,
            note=note,
            regarding=ObjectReference(apiVersion=API_VERSION, kind="LocalModelNode", name=self.node_name,
                                      uid=self._uid),
            reportingController=REPORTING_CONTROLLER,
            reportingInstance=f"localmodel-agent-{self.node_name}"[:128],
        )
        await self.client.create(body)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.client.close()
