"""Run one command and measure it: wall time, the CPU time of the process and all its
children (rusage from wait4), peak resident memory, and the CPU the servers spent meanwhile.

Peak RSS is sampled every 20 ms over the whole process tree: the larger of the largest sum of
the processes' RSS (kserve-storage forks a pool of workers; their memory adds up) and the
largest single high-water mark (VmHWM, which also catches peaks between samples). wait4's
ru_maxrss is not used: a child started by fork/vfork inherits the parent's high-water mark
(the benchmark's own ~50 MiB) and keeps it across exec.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Measurement:
    wall: float           # seconds, start to exit (plus the flush to disk when asked)
    exit_wall: float      # seconds, start to exit
    cpu: float            # user + system seconds of the process tree
    peak_rss: int         # bytes
    server_cpu: float     # user + system seconds of the servers during the run
    returncode: int
    load: float           # 1-minute load average just before the run


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/<pid>/task/*/children)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.scandir(f"/proc/{current}/task"):
                with open(f"{task.path}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def cpu_of(pids: Iterable[int]) -> float:
    """CPU seconds (user + system, children reaped included) of processes and their trees."""
    total = 0.0
    for root in pids:
        for pid in tree(root):
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # utime stime cutime cstime
            total += sum(int(value) for value in fields[11:15]) / _TICK
    return total


def memory_of(pids: Iterable[int]) -> tuple[int, int]:
    """(sum of current RSS, largest VmHWM) of the processes, in bytes."""
    total = highest = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        highest = max(highest, int(line.split()[1]) * 1024)
        except (OSError, IndexError, ValueError):
            continue
    return total, highest


def syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (only that one, unlike sync)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    finally:
        os.close(fd)


def run(command: Sequence[str], env: Mapping[str, str], *, server_pids: Sequence[int],
        log: Path, flush: Path | None = None, timeout: float = 3600,
        cpus: set[int] | None = None) -> Measurement:
    """Run `command` to completion; with `flush`, the wall time includes syncfs(flush). With
    `cpus`, the command (and every process it starts) runs on those CPUs only."""
    load = os.getloadavg()[0]
    server_before = cpu_of(server_pids)
    peak = 0
    done = threading.Event()
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(command) + "\n").encode())
        out.flush()
        started = time.perf_counter()
        process = subprocess.Popen(list(command), env=dict(env), stdout=out, stderr=out,
                                   stdin=subprocess.DEVNULL,
                                   preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, *memory_of(tree(process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
            time.sleep(0.005)
        exit_wall = time.perf_counter() - started
        done.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = exit_wall
    if flush is not None:
        syncfs(flush)
        wall = time.perf_counter() - started
    return Measurement(
        wall=wall, exit_wall=exit_wall, cpu=usage.ru_utime + usage.ru_stime,
        peak_rss=peak, server_cpu=cpu_of(server_pids) - server_before,
        returncode=process.returncode, load=load)
