"""JSON merge patches (RFC 7386) computed as the difference between two documents."""

from __future__ import annotations

from typing import Any


def merge_patch(current: Any, desired: Any) -> Any:
    """The merge patch turning `current` into `desired`; `{}` when they are equal.

    Objects are compared key by key (a removed key becomes `null`); anything else, lists included,
    is replaced whole, as RFC 7386 prescribes.
    """
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            if isinstance(value, dict) and isinstance(current[key], dict):
                patch[key] = merge_patch(current[key], value)
            else:
                patch[key] = value
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(current: Any, desired: Any, path: str = "") -> list[dict[str, Any]]:
    """RFC 6902 operations turning `current` into `desired` (objects diffed, lists replaced)."""
    if isinstance(current, dict) and isinstance(desired, dict):
        ops: list[dict[str, Any]] = []
        for key, value in desired.items():
            sub = f"{path}/{_escape(key)}"
            if key not in current:
                ops.append({"op": "add", "path": sub, "value": value})
            elif current[key] != value:
                ops.extend(json_patch(current[key], value, sub))
        for key in current:
            if key not in desired:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        return ops
    if current == desired:
        return []
    return [{"op": "replace", "path": path, "value": desired}]
