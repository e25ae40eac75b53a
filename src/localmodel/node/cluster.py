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
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import ObjectReference
from lightkube.resources.core_v1 import ConfigMap, Secret, ServiceAccount
from lightkube.types import PatchType

from localmodel.api.quantity import quantity_or_none
from localmodel.api.types import API_VERSION, LocalModelInfo
from localmodel.kube import events, resources
from localmodel.kube.config import (
    CONFIGMAP_NAME,
    ConfigError,
    CredentialsConfig,
    LocalModelConfig,
    parse_credentials_config,
    parse_local_model_config,
)
from localmodel.kube.informer import Informer
from localmodel.node.backend import AgentEvent, Desired
from localmodel.node.capacity import Budgets
from localmodel.node.credentials import (
    NO_CREDENTIALS,
    Credentials,
    SecretData,
    from_service_account,
    from_storage_spec,
    plan_credentials,
    without_storage_secret,
)
from localmodel.node.hostpath import group_volume_path
from localmodel.node.plan import WantedModel

logger = logging.getLogger(__name__)

#: Seconds one watch of the agent's LocalModelNode lasts before it is made again.
AGENT_WATCH_SECONDS = 60

REPORTING_CONTROLLER = "serving.kserve.io/localmodel-agent"
#: Longest wait between attempts to watch again after an error the apiserver answered (403, 404);
#: a broken connection is retried as the controller's informers do (kube/informer.py).
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
    return quantity_or_none(value)


def _is_not_found(exc: ApiError) -> bool:
    return exc.status.code == 404


def _trigger_state(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a change must touch to be worth a pass: the spec (generation) or annotations."""
    meta = (obj or {}).get("metadata") or {}
    return {"generation": meta.get("generation"), "annotations": meta.get("annotations")}


class ClusterBackend:
    """Backend for `localmodel agent` inside a cluster."""

    def __init__(self, client: AsyncClient, *, node_name: str, namespace: str,
                 resume_from: str | None = None) -> None:
        self.client = client
        self.node_name = node_name
        self.namespace = namespace
        self._events = events.EventRecorder(client, REPORTING_CONTROLLER, f"localmodel-agent-{node_name}")
        self._config = LocalModelConfig()
        self._credentials_config = CredentialsConfig()
        self._config_ok = False
        self._uid: str | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        #: Start watching from this resourceVersion instead of listing first.
        self._resume_from = resume_from
        self._informer: Informer | None = None

    # --- watching -------------------------------------------------------------------------------

    async def start(self, wake: Callable[[], None]) -> None:
        """Watch this node's LocalModelNode (an informer on its name) and wake the loop when a
        pass is worth it: the object appears or goes, its spec or annotations change, after every
        list, and after every failed watch (so a pass retries as soon as the apiserver is back)."""

        def changed(event: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
            # Our own status writes change neither generation nor annotations (A2).
            if event != "MODIFIED" or _trigger_state(old) != _trigger_state(new):
                wake()

        # Errors other than a broken connection (403, 404: the CRD is not optional here) are
        # retried at 1, 2, 4, then every WATCH_RETRY_MAX_SECONDS.
        self._informer = Informer(
            self.client, resources.LocalModelNode, name="localmodelnode", fields={"metadata.name": self.node_name},
            optional=False, resume_from=self._resume_from, error_backoff=(0.5, WATCH_RETRY_MAX_SECONDS),
            # A watch that outlives its CRD (uninstalled and installed again while the agent runs,
            # seen on real nodes) is never closed and hears nothing of the new objects: ending
            # each watch after a minute bounds that deafness for one cheap request per minute.
            watch_timeout=AGENT_WATCH_SECONDS, on_sync=wake, on_error=wake)
        self._informer.add_handler(changed)
        self._watch_task = asyncio.create_task(self._informer.run(), name="watch-localmodelnode")

    @property
    def lists(self) -> int:
        """How many times the object was listed (once at start, again after each 410 Gone)."""
        return self._informer.relists if self._informer is not None else 0

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
            raw = None if secret is None else secret.data.get(plan.storage_key)
            if raw is None:
                # KServe's agent downloads anyway; so do we, saying so (and refusing where the
                # Secret decides where the request goes).
                where = f"storage secret {namespace}/{plan.storage_secret_name}"
                missing = (f"{where} not found" if secret is None
                           else f"storage key {plan.storage_key!r} not found in {where}")
                return without_storage_secret(model.uri, missing=missing, parameters=plan.parameters,
                                              config=self._credentials_config)
            return from_storage_spec(
                raw, secret_name=plan.storage_secret_name,
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
        # imagePullSecrets too: a dockerconfigjson Secret there is the oci:// credential, as
        # for the image a modelcar Pod would pull (classify_secret tells the kinds apart).
        names = list(dict.fromkeys(ref.name for ref in [*(account.secrets or []),
                                                        *(account.imagePullSecrets or [])]))
        for name in names:
            if not name:
                continue
            secret = await self._secret(name)
            if secret is None:
                self._warn_once(f"secret:{name}", f"secret {namespace}/{name} listed by "
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
        regarding = ObjectReference(apiVersion=API_VERSION, kind="LocalModelNode", name=self.node_name,
                                    uid=self._uid)
        await self._events.record(regarding, event.type, event.reason, event.message)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.client.close()
