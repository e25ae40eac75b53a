"""Watch a LocalModelNode and keep every status the apiserver ever held, for checks that must
hold at every moment ("never reported Downloaded with wrong content"), not just at the end.

A watch sees each stored version of the object; after a dropped watch or a 410 Gone the
recorder lists again (recording that version too) and watches on. `on_status` runs in the
watching thread for each version, before the next one is read.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError

from localmodel.kube import resources


@dataclass(frozen=True)
class Observation:
    at: float
    resource_version: str
    status: dict[str, Any]
    #: Status keys (`name` or `namespace/name`) the spec of the same version asks for.
    wanted: frozenset[str] = frozenset()

    def phase(self, key: str) -> str | None:
        return (self.status.get("modelStatus") or {}).get(key)

    def detail(self, key: str) -> dict[str, Any]:
        return dict((self.status.get("modelDetails") or {}).get(key) or {})


class StatusRecorder:
    """Records every version of one LocalModelNode's status in a background thread."""

    def __init__(self, kubeconfig: Path, node: str,
                 on_status: Callable[[Observation], None] | None = None) -> None:
        self.node = node
        self.on_status = on_status
        self.history: list[Observation] = []
        self.errors: list[BaseException] = []
        self._client = Client(KubeConfig.from_file(kubeconfig), field_manager="status-recorder")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{node}", daemon=True)

    def start(self) -> StatusRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.errors:
            raise AssertionError(f"the status check failed: {self.errors[0]}") from self.errors[0]

    def _observe(self, obj: Any) -> str:
        raw = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        version = str(raw["metadata"]["resourceVersion"])
        entries = (raw.get("spec") or {}).get("localModels") or []
        wanted = frozenset(f"{e['namespace']}/{e['modelName']}" if e.get("namespace") else e["modelName"]
                           for e in entries)
        observation = Observation(time.monotonic(), version, dict(raw.get("status") or {}), wanted)
        with self._lock:
            if self.history and self.history[-1].resource_version == version:
                return version
        if self.on_status is not None:
            try:
                self.on_status(observation)
            except BaseException as exc:  # noqa: BLE001 - reported by stop()
                self.errors.append(exc)
        with self._lock:
            # Appended once checked: whoever reads the history acts on checked versions only.
            self.history.append(observation)
        return version

    def _run(self) -> None:
        version: str | None = None
        fields = {"metadata.name": self.node}
        while not self._stop.is_set():
            try:
                if version is None:
                    listing = self._client.list(resources.LocalModelNode, fields=fields)
                    for obj in listing:
                        self._observe(obj)
                    version = listing.resourceVersion
                for kind, obj in self._client.watch(resources.LocalModelNode, fields=fields,
                                                    resource_version=version, server_timeout=2):
                    if kind != "DELETED":
                        version = self._observe(obj)
                    if self._stop.is_set():
                        return
            except ApiError as exc:
                if exc.status.code == 410:
                    version = None
                else:
                    time.sleep(0.2)
            except Exception:  # noqa: BLE001 - apiserver down: keep trying until stopped
                version = None
                time.sleep(0.2)

    def observations(self) -> list[Observation]:
        with self._lock:
            return list(self.history)

    def phases(self, key: str) -> list[str]:
        """The phases `key` went through, consecutive repeats folded."""
        seen: list[str] = []
        for observation in self.observations():
            phase = observation.phase(key)
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen


def file_digests(folder: Path) -> dict[str, str]:
    """relative path → sha256 of every entry below `folder` (a symlink or special file shows
    as its type, so it can never pass for content)."""
    found: dict[str, str] = {}
    for current, _dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(current) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink() or not path.is_file():
                found[relative] = "not-a-regular-file"
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
            found[relative] = digest.hexdigest()
    return found


def content_matches(folder: Path, expected: Mapping[str, str]) -> bool:
    return file_digests(folder) == dict(expected)
