"""Crash and resume with a combinable digest (a CRC64NVME, as S3 gives every object): the CRCs
of the ranges a killed run wrote die with it; the next run recomputes them from disk, fetches
only what the journal does not vouch for, and the combined CRC still covers every byte that is
on disk (so bytes that changed at the source behind the journal's back are caught)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from localmodel.errors import IntegrityError
from localmodel.fetch import Layout, read_manifest
from localmodel.fetch.hashing import crc_update
from localmodel.fetch.ranges import RangeSet
from tests.fetch import crcsource
from tests.fetch.models import content, read_tree
from tests.fetch.test_resume import journaled_bytes, sigkill_child

MiB = 1024 * 1024
SIZE = 6 * MiB
CHUNK = 1 * MiB
REPO = Path(__file__).resolve().parents[2]


def served(log: Path) -> RangeSet:
    done = RangeSet()
    if log.exists():
        for line in log.read_text().splitlines():
            _, start, end = line.split()
            done.add(int(start), int(end))
    return done


def overlap(first: RangeSet, second: RangeSet) -> int:
    both = RangeSet()
    for start, end in first:
        for other_start, other_end in second:
            if max(start, other_start) < min(end, other_end):
                both.add(max(start, other_start), min(end, other_end))
    return both.covered()


def kill_midway(source: Path, dest: Path, digests: Path, log: Path, *, after: int) -> None:
    staging = Layout.beside(dest).staging
    sigkill_child([sys.executable, "-m", "tests.fetch.crcsource", str(source), str(dest), str(digests), str(log),
                   str(2 * MiB)], enough=lambda: journaled_bytes(staging) >= after, cwd=REPO)


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, Path, bytes]:
    source = tmp_path / "src"
    source.mkdir()
    data = content("crc-resume", SIZE)
    (source / "w.bin").write_bytes(data)
    digests = tmp_path / "digests.json"
    digests.write_text(json.dumps({"w.bin": f"{crc_update('crc64nvme', data):016x}"}))
    return source, digests, data


def test_sigkill_then_rerun_recomputes_the_crcs_and_refetches_at_most_one_chunk_per_request(
        model: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    source, digests, data = model
    dest, first_log, second_log = tmp_path / "m", tmp_path / "first.log", tmp_path / "second.log"
    kill_midway(source, dest, digests, first_log, after=2 * MiB)
    assert read_manifest(Layout.beside(dest)) is None and not dest.exists()

    crcsource.run(str(source), str(dest), str(digests), str(second_log), rate=None)

    assert read_tree(dest) == {"w.bin": data}
    manifest = read_manifest(Layout.beside(dest))
    assert manifest is not None
    [entry] = manifest.files
    assert entry.verified_with == "crc64nvme" and entry.sha256 is None
    assert entry.local is not None and entry.local.value == f"{crc_update('crc64nvme', data):016x}"
    first, second = served(first_log), served(second_log)
    assert 2 * MiB <= first.covered() < SIZE
    assert overlap(first, second) <= 2 * CHUNK  # two requests in flight, at most a chunk each
    assert first.covered() + second.covered() - overlap(first, second) == SIZE


def test_the_combined_crc_covers_what_is_on_disk_after_a_resume(
        model: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    """The source's bytes change behind the engine's back (same size and mtime, same listed
    CRC, so the plan still matches): the resumed file mixes the old journaled bytes with new
    ones, and the CRC recomputed from disk and combined with the new ranges refuses it."""
    source, digests, data = model
    dest = tmp_path / "m"
    stat = os.stat(source / "w.bin")
    kill_midway(source, dest, digests, tmp_path / "first.log", after=2 * MiB)
    (source / "w.bin").write_bytes(bytes(b ^ 0xFF for b in data))
    os.utime(source / "w.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(IntegrityError, match="crc64nvme"):
        crcsource.run(str(source), str(dest), str(digests), str(tmp_path / "second.log"), rate=None)
    assert read_manifest(Layout.beside(dest)) is None and not dest.exists()


def test_a_scrub_recomputes_the_crc_the_file_was_verified_with(
        model: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    from localmodel.fetch import verify_full

    source, digests, data = model
    dest = tmp_path / "m"
    crcsource.run(str(source), str(dest), str(digests), str(tmp_path / "log"), rate=None)
    layout = Layout.beside(dest)
    manifest = read_manifest(layout)
    assert manifest is not None and verify_full(layout, manifest) == []
    raw = json.loads(layout.manifest.read_text())["files"][0]
    assert raw["verified_with"] == "crc64nvme" and raw["local_digest"]["algorithm"] == "crc64nvme"
    with open(dest / "w.bin", "r+b") as handle:  # bit rot
        handle.seek(SIZE // 2)
        handle.write(bytes([data[SIZE // 2] ^ 1]))
    [problem] = verify_full(layout, manifest)
    assert problem.startswith("crc64nvme: w.bin is ")
