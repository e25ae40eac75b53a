"""Where the repository and KServe's reference manifests (test data) are."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def kserve_reference() -> Path:
    """KServe's CRDs and manifests live in `shared/kserve-reference` beside the repository."""
    for parent in REPO.parents:
        candidate = parent / "shared" / "kserve-reference"
        if candidate.is_dir():
            return candidate
    pytest.fail(f"KServe reference manifests (shared/kserve-reference) not found above {REPO}")
