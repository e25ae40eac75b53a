"""Where the repository and KServe's reference manifests (test data) are."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The start of the reason a test gives when it skips for want of KServe's manifests.
MISSING_REFERENCE = "KServe's reference manifests (shared/kserve-reference) are not beside this checkout"


def kserve_reference(repo: Path = REPO) -> Path:
    """KServe's CRDs and manifests, from `shared/kserve-reference` beside the repository (or
    beside a folder above it). Tests that compare with them, or install KServe's CRDs, skip
    without them, except in CI (CI set), where their absence fails: there the comparison with
    KServe must run."""
    for parent in repo.parents:
        candidate = parent / "shared" / "kserve-reference"
        if candidate.is_dir():
            return candidate
    reason = f"{MISSING_REFERENCE} (looked for shared/kserve-reference above {repo})"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must compare with KServe, so this is a failure there", pytrace=False)
    pytest.skip(reason)
