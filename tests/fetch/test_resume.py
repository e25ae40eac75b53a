"""Crash and resume: a download killed with SIGKILL mid-file is resumed by the next run, which
fetches again at most the unjournaled tail of each request that was in flight (counted on the
server side), and never publishes anything half-done."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from localmodel.fetch import FetchOptions, Layout, download, read_manifest
from localmodel.fetch.ranges import RangeSet
from localmodel.fetch.staging import Staging
from localmodel.sources.base import Digest
from tests.faults.helpers import overlap, union
from tests.fetch.models import content, local_digest, read_tree
from tests.servers.http import FaultServer

KiB, MiB = 1024, 1024 * 1024
SIZE = 12 * MiB
CONCURRENCY = 2
CHUNK = 1 * MiB
CHECKPOINT = 256 * KiB
READ = 512 * KiB  # the most the http source reads at once


def options() -> FetchOptions:
    return FetchOptions(concurrency=CONCURRENCY, chunk_size=CHUNK, checkpoint_size=CHECKPOINT,
                        fsync=False)


_CHILD = """
import sys
from localmodel.fetch import FetchOptions, download
download(sys.argv[1], sys.argv[2], options=FetchOptions(
    concurrency={concurrency}, chunk_size={chunk}, checkpoint_size={checkpoint}, fsync=False))
""".format(concurrency=CONCURRENCY, chunk=CHUNK, checkpoint=CHECKPOINT)


def journaled_bytes(staging: Path) -> int:
    try:
        lines = (staging / "journal.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    done = RangeSet()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "s" in record:
            done.add(record["s"], record["e"])
    return done.covered()


def sigkill_when(code: str, *args: str, enough: Callable[[], bool]) -> None:
    """Run `python -c code args...` (a download) and SIGKILL it once `enough()` holds."""
    sigkill_child([sys.executable, "-c", code, *args], enough=enough)


def sigkill_child(argv: list[str], *, enough: Callable[[], bool], cwd: Path | None = None) -> None:
    """Run `argv` (a download) and SIGKILL it once `enough()` holds."""
    child = subprocess.Popen(argv, cwd=cwd)
    try:
        deadline = time.monotonic() + 120
        while not enough():
            assert child.poll() is None, "the download ended before it could be killed"
            assert time.monotonic() < deadline, "the download made no progress"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def kill_midway(url: str, dest: Path, *, after: int) -> None:
    """Run a download in a child process and SIGKILL it once `after` bytes are journaled."""
    staging = Layout.beside(dest).staging
    sigkill_when(_CHILD, url, str(dest), enough=lambda: journaled_bytes(staging) >= after)


def test_sigkill_then_rerun_refetches_at_most_the_unjournaled_tails(
        fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("resume", SIZE)
    # Trickled, so the child is surely mid-file when killed and no socket buffer fills up.
    url = fault_server.add("/resume/w.bin", data, throttle=3 * MiB)
    dest = tmp_path / "m"
    kill_midway(url, dest, after=4 * MiB)
    first = union(fault_server.served("/resume/w.bin"))
    assert 4 * MiB <= first.covered() < SIZE
    assert not dest.exists() and read_manifest(Layout.beside(dest)) is None

    fault_server.add("/resume/w.bin", data)  # same bytes and ETag, counters reset
    manifest = download(url, dest, options=options())
    second = union(fault_server.served("/resume/w.bin"))

    assert read_tree(dest) == {"w.bin": data}
    assert manifest.files[0].size == SIZE
    refetched = overlap(first, second)
    assert refetched <= CONCURRENCY * (CHECKPOINT + READ)
    assert refetched <= CONCURRENCY * CHUNK  # at most one chunk per in-flight request
    assert first.covered() + second.covered() - refetched == SIZE


def test_staging_from_a_changed_source_is_discarded(fault_server: FaultServer,
                                                    tmp_path: Path) -> None:
    old = content("old", SIZE)
    url = fault_server.add("/changed/w.bin", old, throttle=3 * MiB)
    dest = tmp_path / "m"
    kill_midway(url, dest, after=2 * MiB)
    new = content("new", SIZE)
    fault_server.add("/changed/w.bin", new)  # new ETag: the plan no longer matches
    download(url, dest, options=options())
    assert read_tree(dest) == {"w.bin": new}
    assert union(fault_server.served("/changed/w.bin")).covered() == SIZE


def test_staging_from_an_earlier_boot_is_discarded(fault_server: FaultServer,
                                                   tmp_path: Path) -> None:
    # A reboot cannot be produced here; it is the only fault faked: the boot id on record.
    data = content("boot", SIZE)
    url = fault_server.add("/boot/w.bin", data, throttle=3 * MiB)
    dest = tmp_path / "m"
    kill_midway(url, dest, after=2 * MiB)
    plan_path = Layout.beside(dest).staging / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["boot_id"] = "an-earlier-boot"
    plan_path.write_text(json.dumps(plan))
    fault_server.add("/boot/w.bin", data)
    download(url, dest, options=options())
    assert read_tree(dest) == {"w.bin": data}
    assert union(fault_server.served("/boot/w.bin")).covered() == SIZE
    assert fault_server.body_bytes("/boot/w.bin") == SIZE


def test_journaled_bytes_are_not_read_again_and_are_hashed_from_disk(tmp_path: Path) -> None:
    """Proof by marking: after the kill the source's bytes are changed behind the engine's
    back (same size and mtime, so the plan still matches); the resumed copy keeps the old
    bytes wherever the journal said they were done, and the hash covers what is on disk."""
    source = tmp_path / "src"
    source.mkdir()
    old = content("local", 3 * MiB)
    (source / "w.bin").write_bytes(old)
    stat = os.stat(source / "w.bin")
    dest = tmp_path / "m"
    throttled = _CHILD.replace("fsync=False)", "fsync=False, rate_limit=4 * 1024 * 1024)")
    staging = Layout.beside(dest).staging
    sigkill_when(throttled, str(source), str(dest), enough=lambda: journaled_bytes(staging) >= MiB)
    done = RangeSet()
    for line in (staging / "journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        done.add(record["s"], record["e"])

    new = bytes(b ^ 0xFF for b in old)
    (source / "w.bin").write_bytes(new)
    os.utime(source / "w.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest = download(str(source), dest, options=options())

    result = (dest / "w.bin").read_bytes()
    for start, end in done:
        assert result[start:end] == old[start:end]
    for start, end in done.gaps(len(old)):
        assert result[start:end] == new[start:end]
    assert manifest.files[0].scrub_digest == local_digest(result)


def test_the_journal_keeps_each_files_local_digest_whatever_its_algorithm(tmp_path: Path) -> None:
    """A resumed run trusts the files an earlier run journaled as verified, with the digest they
    were hashed with: BLAKE3 for sources without digests, sha256 in journals written before it
    (and for listed sha256s), CRCs; a reset record voids them."""
    plan = {"source": "file:///m", "files": 4}
    staging = Staging(tmp_path / "staging")
    staging.open(plan)
    b3 = Digest("blake3", local_digest(b"weights").value)
    sha = Digest("sha256", hashlib.sha256(b"config").hexdigest())
    crc = Digest("crc64nvme", "00112233aabbccdd")
    staging.record_verified(0, b3, False)
    staging.record_verified(1, sha, True)
    staging.record_verified(2, crc, True)
    staging.record_verified(3, b3, False)
    staging.record_reset(3)
    staging.close()
    recovered = Staging(tmp_path / "staging").open(plan)
    assert recovered.verified == {0: (b3, False), 1: (sha, True), 2: (crc, True)}
