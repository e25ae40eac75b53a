"""`localmodel dev demo --exit-when-ready`: the README's main command, end to end, twice."""

import filecmp
import subprocess
import sys
from pathlib import Path

from localmodel.api.keys import storage_key
from localmodel.dev.demo import BUCKET, GROUP_NODES, MODEL_PREFIX, NODES


def _run_demo(workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localmodel", "dev", "demo", "--dir", str(workdir),
         "--model-mb", "8", "--exit-when-ready", "--timeout", "240"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )


def test_demo_fills_two_nodes_and_runs_again(tmp_path: Path, kube: object) -> None:
    # `kube` only makes sure the control plane binaries are built before this test's clock starts.
    first = _run_demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "ready: copies 2/2 of sample-model" in first.stdout

    origin = tmp_path / "origin" / BUCKET / MODEL_PREFIX
    key = storage_key(f"s3://{BUCKET}/{MODEL_PREFIX}")
    for node in GROUP_NODES:
        folder = tmp_path / "nodes" / node / "models" / key
        comparison = filecmp.dircmp(origin, folder)
        assert not comparison.left_only and not comparison.right_only and not comparison.diff_files
        shard = "model-00001-of-00003.safetensors"
        assert (folder / shard).read_bytes() == (origin / shard).read_bytes()
        assert (tmp_path / "nodes" / node / "manifests" / f"{key}.json").is_file()
    outside = [n for n in NODES if n not in GROUP_NODES]
    for node in outside:
        assert not (tmp_path / "nodes" / node / "models" / key).exists()

    second = _run_demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ready: copies 2/2 of sample-model" in second.stdout
