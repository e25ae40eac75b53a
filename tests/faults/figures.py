"""The fault suite's figures: numbers each test measures, gathered for RELIABILITY.md.

Tests call `record(section, name, value)`. At the end of the session the figures are printed in
the terminal summary and, when `LOCALMODEL_FIGURES=path.json` is set, written there as JSON.
Figures are reported, never compared with a timing threshold (tests do not fail on timing).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_figures: dict[str, dict[str, Any]] = {}

ENVIRONMENT_VARIABLE = "LOCALMODEL_FIGURES"


def record(section: str, name: str, value: Any) -> None:
    with _lock:
        _figures.setdefault(section, {})[name] = value


def snapshot() -> dict[str, dict[str, Any]]:
    with _lock:
        return {section: dict(values) for section, values in _figures.items()}


def write_if_asked() -> Path | None:
    target = os.environ.get(ENVIRONMENT_VARIABLE)
    if not target or not _figures:
        return None
    path = Path(target)
    path.write_text(json.dumps(snapshot(), indent=1, sort_keys=True, default=str) + "\n")
    return path
