"""A set of byte ranges [start, end) kept merged and sorted. Pure, no I/O.

The engine records which parts of each staging file hold downloaded bytes; hashing follows
the contiguous prefix from offset 0, and a resumed download fetches only the gaps.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator


class RangeSet:
    """Disjoint, sorted, merged half-open byte ranges."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Add [start, end), merging with touching or overlapping ranges."""
        if end <= start:
            return
        # First range whose end reaches `start` (touching counts, so neighbours merge).
        i = bisect_left(self._ends, start)
        j = i
        while j < len(self._starts) and self._starts[j] <= end:
            start = min(start, self._starts[j])
            end = max(end, self._ends[j])
            j += 1
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def prefix_end(self) -> int:
        """End of the contiguous range that starts at 0 (0 if there is none)."""
        if self._starts and self._starts[0] == 0:
            return self._ends[0]
        return 0

    def covered(self) -> int:
        """Total number of bytes in the set."""
        return sum(end - start for start, end in zip(self._starts, self._ends))

    def gaps(self, size: int) -> list[tuple[int, int]]:
        """The ranges of [0, size) not in the set."""
        missing: list[tuple[int, int]] = []
        cursor = 0
        for start, end in zip(self._starts, self._ends):
            if start >= size:
                break
            if start > cursor:
                missing.append((cursor, start))
            cursor = max(cursor, end)
        if cursor < size:
            missing.append((cursor, size))
        return missing

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"
