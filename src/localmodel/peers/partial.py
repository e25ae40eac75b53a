"""Pieces of downloads still in progress, offered to peers before the whole model is here.

A node that is filling a model (from the origin under a slot, or from peers) records each
piece once it is on disk in its staging file, with its entry of the file's piece table
(`protocol`: "pieces" tables hold each piece's sha256, "chain" tables the sha256 chaining value
after it):

    PartialDownloads          the agent-wide registry the peer server reads
    RecordingSource(inner)    wraps the origin source of a download: for a "pieces" table,
                              hashes each piece as it streams through and records it after the
                              engine wrote it; for a "chain" table, records the chaining values
                              the engine's own sha256 reaches (`chained`), so the download
                              hashes each byte once

A piece counts as written when the engine asks the source for the next bytes (the engine
writes each item before asking for more); a download that is cancelled or fails mid-piece
records nothing for that piece. What is recorded was never checked against the origin's
whole-file digest (that only happens at the end), so a receiver treats partial pieces like any
peer's: checked against the digests it pinned, and the whole file against the origin digest
before anything is published. A partial piece can make a download fail and retry, never
poison a cache.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from localmodel.peers.protocol import CHAIN, DIGEST_SIZE, PIECE_SIZE, PIECES, ZERO_DIGEST, piece_count, table_kind
from localmodel.sources.base import Listing, Source

#: Completed downloads whose piece tables are kept.
FINISHED_KEPT = 64


@dataclass
class _PartialFile:
    size: int
    digests: bytearray
    kind: str = PIECES
    count: int = 0


@dataclass
class _Partial:
    data_dir: Path
    listing_json: bytes
    files: dict[str, _PartialFile] = field(default_factory=dict)


class PartialDownloads:
    """storage key → pieces written so far, for every download of this agent. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Notified whenever a piece is recorded or a download ends (long polls wait on it).
        self._changed = threading.Condition(self._lock)
        self._downloads: dict[str, _Partial] = {}
        #: Tables of downloads that completed, kept so the peer server need not hash the
        #: files again: key → path → (size, kind, digests). The oldest are dropped.
        self._finished: dict[str, dict[str, tuple[int, str, bytes]]] = {}

    def begin(self, key: str, listing: Listing, data_dir: Path, source: str) -> None:
        files = {f.path: _PartialFile(f.size, bytearray(piece_count(f.size) * DIGEST_SIZE), table_kind(f))
                 for f in listing.files}
        described = {"source": source, "revision": listing.revision, "files": [
            {"path": f.path, "size": f.size,
             "digest": {"algorithm": f.digest.algorithm, "value": f.digest.value} if f.digest else None}
            for f in listing.files]}
        with self._lock:
            self._downloads[key] = _Partial(data_dir, json.dumps(described).encode(), files)

    def end(self, key: str, *, completed: bool = False) -> None:
        """The download stopped. After a success (`completed`: the engine checked every file
        against the origin's digests), the tables of the files whose every piece was recorded
        are kept for the peer server."""
        with self._lock:
            partial = self._downloads.pop(key, None)
            self._changed.notify_all()
            if not completed or partial is None:
                return
            tables = {path: (entry.size, entry.kind, bytes(entry.digests)) for path, entry in partial.files.items()
                      if entry.count == piece_count(entry.size)}
            if tables:
                self._finished[key] = tables
                while len(self._finished) > FINISHED_KEPT:
                    self._finished.pop(next(iter(self._finished)))

    def finished_table(self, key: str, path: str, size: int, kind: str = PIECES) -> bytes | None:
        """The piece table of `kind` a completed download recorded for this file, if any."""
        with self._lock:
            found = self._finished.get(key, {}).get(path)
        return found[2] if found is not None and found[:2] == (size, kind) else None

    def kind(self, key: str, path: str) -> str | None:
        with self._lock:
            partial = self._downloads.get(key)
            entry = partial.files.get(path) if partial else None
            return entry.kind if entry else None

    def record_chain(self, key: str, path: str, end: int, value: bytes, final: bool) -> None:
        """A download's sha256 of a "chain" file reached `end` with chaining value `value`
        (`final`: the file's sha256, after the whole file): its piece table entry."""
        with self._lock:
            partial = self._downloads.get(key)
            entry = partial.files.get(path) if partial else None
            if entry is None or entry.kind != CHAIN:
                return
            size = entry.size
        if final:
            index = piece_count(size) - 1
        elif end % PIECE_SIZE == 0 and 0 < end < size:
            index = end // PIECE_SIZE - 1
        else:
            return  # not a piece boundary, or the end of the file before its digest is known
        self.record(key, path, index, value)

    def record(self, key: str, path: str, index: int, digest: bytes) -> None:
        with self._lock:
            partial = self._downloads.get(key)
            entry = partial.files.get(path) if partial else None
            if entry is None or index >= piece_count(entry.size):
                return
            slot = slice(index * DIGEST_SIZE, (index + 1) * DIGEST_SIZE)
            if entry.digests[slot] == ZERO_DIGEST:
                entry.count += 1
            entry.digests[slot] = digest
            self._changed.notify_all()

    # --- what the server asks -------------------------------------------------------------

    def describe(self, key: str) -> bytes | None:
        """The listing this download follows (JSON), or None when the key is not downloading."""
        with self._lock:
            partial = self._downloads.get(key)
            return partial.listing_json if partial else None

    def table(self, key: str, path: str, *, known: int = -1, wait: float = 0.0,
              kind: str | None = None) -> tuple[bytes, int] | None:
        """(entries with zeros for missing pieces, pieces present), or None (also when the
        file's table is not of `kind`, if given). With `wait`, first wait up to that long for
        more than `known` pieces (a long poll)."""
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                partial = self._downloads.get(key)
                entry = partial.files.get(path) if partial else None
                if entry is None or kind not in (None, entry.kind):
                    return None
                left = deadline - time.monotonic()
                if entry.count > known or entry.count == piece_count(entry.size) or left <= 0:
                    return bytes(entry.digests), entry.count
                self._changed.wait(left)

    def covers(self, key: str, path: str, start: int, end: int) -> Path | None:
        """The staging data folder when every piece touching [start, end) is written, else None."""
        with self._lock:
            partial = self._downloads.get(key)
            entry = partial.files.get(path) if partial else None
            if partial is None or entry is None or end > entry.size or start >= end:
                return None
            for index in range(start // PIECE_SIZE, (end - 1) // PIECE_SIZE + 1):
                if entry.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE] == ZERO_DIGEST:
                    return None
            return partial.data_dir

    def size(self, key: str, path: str) -> int | None:
        with self._lock:
            partial = self._downloads.get(key)
            entry = partial.files.get(path) if partial else None
            return entry.size if entry else None


class RecordingSource:
    """An origin source whose pieces are recorded in `partials` as the engine writes them
    ("pieces" tables) or as the engine's sha256 passes them (`chained`, "chain" tables)."""

    #: The engine keeps its sha256 chaining value at every piece boundary (`fetch.chaining`).
    chain_interval = PIECE_SIZE

    def __init__(self, inner: Source, partials: PartialDownloads, key: str) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.partials = partials
        self.key = key

    def list_files(self) -> Listing:
        return self.inner.list_files()

    def chained(self, path: str, end: int, value: bytes, final: bool) -> None:
        self.partials.record_chain(self.key, path, end, value, final)

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
        if self.partials.kind(self.key, path) != PIECES:
            # A chain file (its entries come from the engine's own hash), or not recorded.
            yield from self.inner.read_range(path, offset, length)
            return
        index = offset // PIECE_SIZE
        # A piece is recorded only if this request saw all of it.
        hasher = hashlib.sha256() if offset == index * PIECE_SIZE else None
        position = offset
        size = self.partials.size(self.key, path)
        for item in self.inner.read_range(path, offset, length):
            view = memoryview(item).cast("B")
            done: list[tuple[int, bytes]] = []
            cursor = 0
            while cursor < len(view):
                boundary = (index + 1) * PIECE_SIZE
                take = min(len(view) - cursor, boundary - position)
                if hasher is not None:
                    hasher.update(view[cursor:cursor + take])
                cursor += take
                position += take
                if position == boundary or (size is not None and position == size):
                    if hasher is not None:
                        done.append((index, hasher.digest()))
                    index += 1
                    hasher = hashlib.sha256()
            yield item
            # The engine asked for more: everything yielded so far is on disk.
            for piece, digest in done:
                self.partials.record(self.key, path, piece, digest)

    def close(self) -> None:
        self.inner.close()
