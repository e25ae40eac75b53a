"""Crashes inside the publish step, each at one exact point, and the runs that come after.

Random SIGKILLs (tests/faults/test_crashes.py) land in these windows only now and then, when
fsync is slow. Here a child process dies with os._exit at the chosen call, which is the one
fault a test cannot time for real. Found by the fault suite: a crash after data/ had moved into
place and before the manifest was written made the next run download everything again into a
new data/ while the journal still vouched for the old files; killed again half-way, the run
after that published the half-written files as verified (zeros where bytes were missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from localmodel.fetch import FetchOptions, Layout, download, read_manifest
from tests.fetch.models import content, local_digest, read_tree
from tests.fetch.test_resume import _CHILD, sigkill_when
from tests.servers.http import FaultServer

MiB = 1024 * 1024
SIZE = 6 * MiB

_DIE_AT = """
import os, sys
from localmodel.fetch import FetchOptions, download
from localmodel.fetch import manifest as manifests
from localmodel.fetch import staging as staging_module
target = sys.argv[3]
if target == "write_manifest":
    manifests.write_manifest = lambda *args, **kwargs: os._exit(9)
elif target == "wipe":
    staging_module.Staging.wipe = lambda self: os._exit(9)
download(sys.argv[1], sys.argv[2], options=FetchOptions(
    concurrency=2, chunk_size=1024 * 1024, checkpoint_size=256 * 1024, fsync=False))
"""


def die_at(point: str, url: str, dest: Path) -> None:
    """Run a download in a child that exits (as if SIGKILLed) when it reaches `point`."""
    done = subprocess.run([sys.executable, "-c", _DIE_AT, url, str(dest), point], check=False)
    assert done.returncode == 9, f"the child did not reach {point} (exit {done.returncode})"


def kill_after_restart(url: str, dest: Path, *, after: int) -> None:
    """Run a download in a child and SIGKILL it once it has journaled `after` bytes since
    resetting the file (its staging already holds a journal from an earlier run)."""
    journal = Layout.beside(dest).staging / "journal.jsonl"

    def fresh_bytes() -> int:
        total, counting = 0, False
        for line in journal.read_text().splitlines() if journal.exists() else []:
            record = json.loads(line)
            counting = counting or bool(record.get("reset"))
            if counting and "s" in record:
                total += record["e"] - record["s"]
        return total

    sigkill_when(_CHILD, url, str(dest), enough=lambda: fresh_bytes() >= after)


def options() -> FetchOptions:
    return FetchOptions(concurrency=2, chunk_size=MiB, checkpoint_size=256 * 1024, fsync=False)


def test_crash_after_the_folder_moved_is_finished_without_fetching_again(
        fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("moved", SIZE)
    url = fault_server.add("/moved/w.bin", data)
    dest = tmp_path / "m"
    die_at("write_manifest", url, dest)
    layout = Layout.beside(dest)
    assert read_tree(dest) == {"w.bin": data} and read_manifest(layout) is None
    assert not (layout.staging / "data").exists() and (layout.staging / "manifest.json").exists()
    served = fault_server.body_bytes("/moved/w.bin")

    manifest = download(url, dest, options=options())
    assert fault_server.body_bytes("/moved/w.bin") == served  # not one byte fetched again
    assert read_manifest(layout) == manifest
    assert manifest.files[0].scrub_digest == local_digest(data)
    assert read_tree(dest) == {"w.bin": data}
    assert not layout.staging.exists()


def test_records_of_a_lost_staging_file_are_never_trusted_again(
        fault_server: FaultServer, tmp_path: Path) -> None:
    """The sequence the fault suite hit: publish interrupted without a usable intent (here the
    folder was also changed, so it cannot be vouched for), a new run killed half-way, and a
    third run. The third must not publish the half-written files."""
    data = content("lost", SIZE)
    url = fault_server.add("/lost/w.bin", data)
    dest = tmp_path / "m"
    die_at("write_manifest", url, dest)
    (dest / "w.bin").write_bytes(b"tampered")  # the moved folder no longer matches the intent
    fault_server.add("/lost/w.bin", data, throttle=3 * MiB)  # same bytes and ETag, slow
    kill_after_restart(url, dest, after=MiB)  # the second run starts over, dies half-way

    fault_server.add("/lost/w.bin", data)
    manifest = download(url, dest, options=options())
    assert read_tree(dest) == {"w.bin": data}
    assert manifest.files[0].scrub_digest == local_digest(data)


def test_staging_left_after_the_manifest_is_removed_by_the_next_run(
        fault_server: FaultServer, tmp_path: Path) -> None:
    data = content("left", SIZE)
    url = fault_server.add("/left/w.bin", data)
    dest = tmp_path / "m"
    die_at("wipe", url, dest)
    layout = Layout.beside(dest)
    assert read_manifest(layout) is not None and layout.staging.exists()
    served = fault_server.body_bytes("/left/w.bin")
    download(url, dest, options=options())
    assert not layout.staging.exists()
    assert fault_server.body_bytes("/left/w.bin") == served
