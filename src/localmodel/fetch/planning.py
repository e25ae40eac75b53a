"""Chunk planning: which byte ranges to request, in which order. Pure, no I/O.

Each file's missing ranges are cut into requests of at most `chunk_size` bytes. Requests take
turns across files (the first chunk of every file, then the second of every file that has
one, ...), each file's front to back, so the threads working at one moment are spread over as
many files as there are:
- fewer threads write into the same file, and writers of one file queue on its inode lock
  (measured: ~10% of the CPU spinning in rwsem_spin_on_owner with 4 threads on one tmpfs file);
- a file's sha256 follows its contiguous prefix; with fewer streams per file more bytes are
  hashed straight from memory at that frontier instead of re-read from the page cache;
- the files' hashes run on several threads at once, so no single file's hash is left to finish
  alone at the end.
A model of many small files still goes file by file (each has one chunk). A source that cannot
serve ranges gets one request per file covering the whole file (restarted from 0 on resume).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from localmodel.fetch.ranges import RangeSet


@dataclass(frozen=True)
class Request:
    """One ranged read of one file."""

    file_index: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def split_range(start: int, end: int, chunk_size: int) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most `chunk_size`, the last one possibly shorter.

    Chunk boundaries are aligned to multiples of `chunk_size` from offset 0, so a resumed
    download asks for the same ranges a fresh one would.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    pieces: list[tuple[int, int]] = []
    cursor = start
    while cursor < end:
        boundary = (cursor // chunk_size + 1) * chunk_size
        pieces.append((cursor, min(boundary, end)))
        cursor = pieces[-1][1]
    return pieces


def plan_requests(sizes: Sequence[int], done: Sequence[RangeSet], chunk_size: int,
                  seekable: Sequence[bool] | None = None) -> list[Request]:
    """Requests that fetch every byte of every file not yet in `done`, taking turns across
    files (see the module docstring)."""
    per_file: list[list[Request]] = []
    for index, size in enumerate(sizes):
        if seekable is not None and not seekable[index]:
            if done[index].prefix_end() < size:
                per_file.append([Request(index, 0, size)])
            continue
        per_file.append([Request(index, s, e) for gap_start, gap_end in done[index].gaps(size)
                         for s, e in split_range(gap_start, gap_end, chunk_size)])
    return [request for turn in itertools.zip_longest(*per_file) for request in turn
            if request is not None]
