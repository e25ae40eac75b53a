"""The package layout's import rules (docs/architecture.md, "Packages and imports") hold.

The rules are import-linter contracts in pyproject.toml; import-linter reads every import,
lazy ones inside functions included, so a shortcut taken in a hurry shows here first."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the `localmodel` package found in `src`, with the repository's contracts."""
    script = "import sys; from importlinter.cli import lint_imports; " \
             f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", script], cwd=src, env={"PYTHONPATH": str(src)},
                          capture_output=True, text=True, timeout=120)


def test_the_layout_rules_hold() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_source_that_imports_the_agent_breaks_the_rules(tmp_path: Path) -> None:
    """The check itself can fail: a copy of the tree where a source imports node/ is refused."""
    shutil.copytree(ROOT / "src" / "localmodel", tmp_path / "localmodel",
                    ignore=shutil.ignore_patterns("__pycache__"))
    base = tmp_path / "localmodel" / "sources" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _shortcut():\n    import localmodel.node.plan  # noqa: F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sources are leaves" in result.stdout and "BROKEN" in result.stdout
    assert "localmodel.sources.base -> localmodel.node.plan" in result.stdout
