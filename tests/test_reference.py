"""Without KServe's reference manifests, the tests that need them skip with the reason, except
in CI, where they fail (a skipped comparison with KServe would hide a regression there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.reference import MISSING_REFERENCE, kserve_reference


def test_found_in_shared_beside_the_checkout(tmp_path: Path) -> None:
    reference = tmp_path / "shared" / "kserve-reference"
    reference.mkdir(parents=True)
    assert kserve_reference(tmp_path / "localmodel") == reference


def test_missing_skips_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=re.escape(MISSING_REFERENCE)):
        kserve_reference(tmp_path / "fresh-clone")


def test_missing_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must compare with KServe"):
        kserve_reference(tmp_path / "fresh-clone")
