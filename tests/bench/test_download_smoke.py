"""bench/download.py at a tiny scale with the tools that need no install (localmodel with and
without verification, huggingface_hub's snapshot_download, the curl and write limits), so the
benchmark script cannot rot. Asserts what the run produced, never how fast it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "download.py"


def test_download_benchmark_runs_and_every_copy_is_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--scale", "0.001", "--runs", "1", "--dest", "both",
         "--sources", "http,s3,hf", "--tools", "fast",
         "--cache", str(tmp_path / "model"), "--shm-dir", str(tmp_path / "shm"),
         "--disk-dir", str(tmp_path / "disk"), "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    [data] = [json.loads(path.read_text()) for path in out.glob("download-*.json")]
    [report] = list(out.glob("download-*.md"))
    rows = data["rows"]
    runs = {(row["dest"], row["source"], row["tool"]) for row in rows}
    for dest in ("shm", "disk"):
        for source in ("http", "s3", "hf"):
            assert (dest, source, "localmodel") in runs
            assert (dest, source, "localmodel --verify none") in runs
        assert (dest, "hf", "snapshot_download") in runs
        assert (dest, "-", "limit: write") in runs
    for source in ("http", "s3", "hf"):
        assert ("-", source, "limit: read (8 curl streams)") in runs
    # The script compares every downloaded file with the source byte for byte; any difference
    # or a failed tool shows up as a problem (and a non-zero exit, checked above).
    assert all(row["problems"] == [] and row["returncode"] == 0 for row in rows)
    assert all(row["bytes"] > 0 and row["wall"] > 0 and row["cpu"] >= 0 for row in rows)
    # Nothing is left behind in the destinations.
    for dest in ("shm", "disk"):
        assert not any((tmp_path / dest).rglob("*.safetensors"))
    text = report.read_text()
    for heading in ("### Machine limits", "### http → shm", "### s3 → disk",
                    "### Cost of verification", "### Targets"):
        assert heading in text


def test_the_byte_comparison_catches_a_flipped_and_a_missing_byte(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from dlbench.model import identical
    finally:
        sys.path.remove(str(BENCH.parent))
    data = bytes(range(256)) * 40_000  # more than one 4 MiB comparison block
    original, copy = tmp_path / "a", tmp_path / "b"
    original.write_bytes(data)
    copy.write_bytes(data)
    assert identical(original, copy)
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not identical(original, copy)
    copy.write_bytes(data[:5_000_000] + bytes([data[5_000_000] ^ 1]) + data[5_000_001:])
    assert not identical(original, copy)
    copy.write_bytes(data[:-1])
    assert not identical(original, copy)
    assert not identical(original, tmp_path / "missing")
