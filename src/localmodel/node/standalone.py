"""Standalone mode: the same reconcile from a YAML file, status to `<root>/status.json`.

For hosts without Kubernetes (a workstation, a VM, the README demo). The file has the
`localModels` list of a LocalModelNode spec, or a whole LocalModelNode object:

    localModels:
      - sourceModelUri: hf://org/model
        modelName: my-model
        modelSize: 20Gi            # optional: refuse a model larger than this
        nodeGroup: gpu             # optional: counts against nodeGroups.gpu below
    nodeGroups:                    # optional: storageLimit per group
      gpu: 100Gi

Credentials come from the agent's environment (AWS_*, HF_TOKEN, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_*, `<host>-headers`...), read once by the CLI and passed in. The file is polled every
second; any change wakes the reconciler. `status.json` is replaced atomically on each change.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from localmodel.api.keys import status_key
from localmodel.api.quantity import parse_quantity
from localmodel.api.types import LocalModelInfo
from localmodel.node.backend import AgentEvent, Desired
from localmodel.node.capacity import Budgets
from localmodel.node.credentials import Credentials
from localmodel.node.plan import WantedModel

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"

#: Environment names that carry download settings; everything else stays out of `settings`.
SETTING_PREFIXES = ("AWS_", "S3_", "GOOGLE_", "GCS_", "STORAGE_EMULATOR_HOST", "AZURE_", "AZ_",
                    "HF_", "HUGGING_FACE_", "MODELSCOPE_", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE",
                    "LOCALMODEL_",
                    "STORAGE_ALLOW_PATTERNS", "STORAGE_IGNORE_PATTERNS")


def settings_from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The download settings in an environment: known prefixes, awsAnonymousCredential, headers."""
    return {
        name: value
        for name, value in environ.items()
        if name.startswith(SETTING_PREFIXES) or name == "awsAnonymousCredential" or name.endswith("-headers")
    }


class ManifestError(ValueError):
    pass


def parse_manifest(text: str) -> tuple[list[LocalModelInfo], dict[str, int], dict[str, int], list[str]]:
    """(entries, declared sizes by status key, storage limits by group, warnings)."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ManifestError("the manifest must be a mapping with a localModels list")
    if raw.get("kind") == "LocalModelNode":
        raw = {**(raw.get("spec") or {}), "nodeGroups": raw.get("nodeGroups")}
    items = raw.get("localModels")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise ManifestError("localModels must be a list")
    entries: list[LocalModelInfo] = []
    sizes: dict[str, int] = {}
    warnings: list[str] = []
    for index, item in enumerate(items):
        try:
            entry = LocalModelInfo.model_validate(item)
        except ValueError as exc:
            warnings.append(f"localModels[{index}] ignored: {exc}")
            continue
        entries.append(entry)
        if isinstance(item, dict) and item.get("modelSize") is not None:
            try:
                sizes[status_key(entry.model_name, entry.namespace or "")] = parse_quantity(item["modelSize"])
            except ValueError:
                warnings.append(f"localModels[{index}].modelSize {item['modelSize']!r} is not a quantity")
    limits: dict[str, int] = {}
    for group, limit in (raw.get("nodeGroups") or {}).items():
        try:
            limits[str(group)] = parse_quantity(limit)
        except ValueError:
            warnings.append(f"nodeGroups.{group} {limit!r} is not a quantity")
    return entries, sizes, limits, warnings


class StandaloneBackend:
    """Backend for `localmodel agent --manifest FILE`."""

    def __init__(self, manifest: Path, root: Path, *, node_name: str, settings: Mapping[str, str],
                 resync_seconds: float = 60.0, poll_seconds: float = 1.0) -> None:
        self.manifest = manifest
        self.root = root
        self.node_name = node_name
        self._settings = dict(settings)
        self._resync = resync_seconds
        self._poll = poll_seconds
        self._status: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._limits: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._generation = 0
        self._fingerprint: tuple[float, int] | None = None

    @property
    def status_path(self) -> Path:
        return self.root / STATUS_FILE

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = os.stat(self.manifest)
        except FileNotFoundError:
            return None
        return (st.st_mtime, st.st_size)

    async def start(self, wake: Callable[[], None]) -> None:
        self._task = asyncio.create_task(self._poll_file(wake), name="poll-manifest")

    async def _poll_file(self, wake: Callable[[], None]) -> None:
        last = self._stat()
        while True:
            await asyncio.sleep(self._poll)
            current = self._stat()
            if current != last:
                last = current
                wake()

    async def load(self) -> Desired | None:
        try:
            text = self.manifest.read_text()
        except FileNotFoundError:
            return None
        fingerprint = self._stat()
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self._generation += 1
        try:
            entries, sizes, limits, warnings = parse_manifest(text)
        except ManifestError as exc:
            # A half-written file must not delete every model: keep the last wishes.
            raise ManifestError(f"{self.manifest}: {exc}") from exc
        self._sizes, self._limits = sizes, limits
        return Desired(entries=tuple(entries), generation=self._generation, status=self._status,
                       resync_seconds=self._resync, warnings=tuple(warnings))

    async def credentials(self, model: WantedModel) -> Credentials:
        return Credentials(settings=dict(self._settings), origins=("environment",) if self._settings else ())

    async def budgets(self, model: WantedModel) -> Budgets:
        declared = [self._sizes[k] for k in model.status_keys if k in self._sizes]
        return Budgets(
            declared_bytes=max(declared) if declared else None,
            group_limits={g: self._limits.get(g) for g in model.node_groups},
        )

    async def write_status(self, patch: Mapping[str, Any], full: Mapping[str, Any]) -> Mapping[str, Any] | None:
        self._status = json.loads(json.dumps(full))
        body = {
            "apiVersion": "serving.kserve.io/v1alpha1",
            "kind": "LocalModelNode",
            "metadata": {"name": self.node_name},
            "manifest": str(self.manifest),
            "updated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "status": self._status,
        }
        await asyncio.to_thread(self._write_file, json.dumps(body, indent=2, sort_keys=True) + "\n")
        return self._status

    def _write_file(self, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.status_path.with_name(f".{STATUS_FILE}.tmp")
        temporary.write_text(text)
        os.replace(temporary, self.status_path)

    async def emit(self, event: AgentEvent) -> None:
        """Nothing to do: the reconciler already logged the event, the only record here."""

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
