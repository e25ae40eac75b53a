"""bench/dedup.py at a tiny scale, so the benchmark script cannot rot. Asserts what the run
produced (bytes fetched, reused and on disk, both models intact), never how fast it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dedup.py"
MiB = 2**20


def test_dedup_benchmark_counts_the_shared_shards_once(tmp_path: Path) -> None:
    out = tmp_path / "dedup.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--shards", "4", "--shard-mib", "1", "--changed", "1",
         "--model-cache", str(tmp_path / "model"), "--root", str(tmp_path / "root"), "--json", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {row["dedup"]: row for row in data["rows"]}
    both = data["v1_bytes"] + data["v2_bytes"]
    assert rows[True]["problems"] == rows[False]["problems"] == []
    # Without the store v2 is fetched whole and both copies stay on disk.
    assert rows[False]["v2"]["origin_bytes"] == data["v2_bytes"] and rows[False]["v2"]["reused_bytes"] == 0
    assert rows[False]["disk_apparent"] >= both
    # With it only the changed shard and config cross the network; the rest is on disk once.
    reused = rows[True]["v2"]["reused_bytes"]
    assert reused == 3 * MiB + 2 * MiB  # the three unchanged shards and the tokenizer
    # ... plus a probe of 64 KiB for each of those four files (the origin shows it holds them).
    assert rows[True]["v2"]["origin_bytes"] == data["v2_bytes"] - reused + 4 * 64 * 1024
    # On disk: v1, plus what v2 brought (manifests and such beside: a few KiB).
    assert both - reused <= rows[True]["disk_apparent"] < both - reused + 64 * 1024
    assert "| on |" in result.stdout and "| off |" in result.stdout
