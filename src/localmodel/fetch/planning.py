"""Chunk planning: which byte ranges to request, in which order. Pure, no I/O.

Each file's missing ranges are cut into requests of at most `chunk_size` bytes. Requests are
ordered file by file and front to back, so the per-file hash (which follows the contiguous
prefix) advances steadily and few files are open at once. A source that cannot serve ranges
gets one request per file covering the whole file (restarted from 0 on resume).
"""

from __future__ import annotations

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
    """Requests that fetch every byte of every file not yet in `done`."""
    requests: list[Request] = []
    for index, size in enumerate(sizes):
        if seekable is not None and not seekable[index]:
            if done[index].prefix_end() < size:
                requests.append(Request(index, 0, size))
            continue
        for gap_start, gap_end in done[index].gaps(size):
            requests.extend(Request(index, s, e) for s, e in split_range(gap_start, gap_end, chunk_size))
    return requests
