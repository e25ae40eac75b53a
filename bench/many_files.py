"""Time and peak memory of the engine for models made of many tiny files.

    .venv/bin/python bench/many_files.py [--files 10000 50000 100000] [--fsync]

Each run is a child process (`localmodel.fetch.download` from a local folder of N one-to-six
byte files into a fresh folder on the same filesystem) whose peak RSS comes from os.wait4.
The numbers set FetchOptions.max_files: the agent's memory limit (300Mi) must hold two
downloads at the limit on top of the agent's ~65 MiB. Measured here (local source, no fsync):

       files  seconds  peak RSS MiB  KiB/file
       10000      2.9            56      2.7
       50000     12.6           238      4.3
      100000     26.7           421      4.0   (before the worker queue: 527 MiB)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import sys
from localmodel.fetch import FetchOptions, download
download(sys.argv[1], sys.argv[2], options=FetchOptions(
    fsync=sys.argv[3] == "1", max_files=int(sys.argv[4])))
"""


def make_source(folder: Path, count: int) -> None:
    for index in range(count):
        sub = folder / f"d{index // 1000:03d}"
        if index % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"f{index:06d}.txt").write_bytes(b"x%d" % index)


def run(source: Path, dest: Path, count: int, fsync: bool) -> tuple[float, float]:
    started = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(source), str(dest),
                              "1" if fsync else "0", str(count)])
    _pid, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"download of {count} files failed ({status})")
    return time.monotonic() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--fsync", action="store_true", help="fdatasync every file (the default)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="localmodel-many-files-", dir="/var/tmp"))
    try:
        print(f"{'files':>8} {'seconds':>8} {'files/s':>8} {'peak RSS MiB':>13} {'KiB/file':>9}")
        for count in args.files:
            source = base / f"src-{count}"
            make_source(source, count)
            seconds, peak = run(source, base / f"dst-{count}", count, args.fsync)
            print(f"{count:>8} {seconds:>8.1f} {count / seconds:>8.0f} {peak:>13.0f} "
                  f"{(peak - 30) * 1024 / count:>9.2f}")
            shutil.rmtree(source)
            shutil.rmtree(base / f"dst-{count}")
            shutil.rmtree(base / ".localmodel", ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
