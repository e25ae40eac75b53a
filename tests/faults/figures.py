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


#: Sections in the order RELIABILITY.md tells them, with the test that measures each.
SECTIONS = {
    "crashes": "tests/faults/test_crashes.py",
    "damage": "tests/faults/test_disk_damage.py",
    "full disk": "tests/faults/test_full_disk.py",
    "api outage": "tests/faults/test_api_outages.py",
    "watch 410": "tests/faults/test_api_outages.py",
    "hostile inputs": "tests/faults/test_hostile_inputs.py",
    "rbac": "tests/faults/test_rbac.py",
    "least privilege": "tests/faults/test_least_privilege.py",
    "shared content": "tests/faults/test_shared_content.py",
    "hostile rows": "tests/faults/test_hostile_inputs.py",
}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(measured: dict[str, dict[str, Any]]) -> str:
    """The figures as Markdown tables, one per section (what RELIABILITY.md is made of)."""
    ordered = [s for s in SECTIONS if s in measured] + sorted(set(measured) - set(SECTIONS))
    lines: list[str] = []
    for section in ordered:
        source = SECTIONS.get(section)
        lines += [f"### {section}", ""]
        if source:
            lines += [f"Measured by `{source}`.", ""]
        header = ("row", "input → outcome") if section == "hostile rows" else ("figure", "value")
        lines += [f"| {header[0]} | {header[1]} |", "|---|---|"]
        lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in measured[section].items()]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(render_markdown(json.loads(Path(sys.argv[1]).read_text())), end="")
