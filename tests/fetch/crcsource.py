"""A local folder served as an object store with full-object CRC64NVME digests (S3's default):
the engine's combinable-CRC path, driven by a process the tests can SIGKILL. The digests come
from a JSON file fixed by the test, so the source's bytes can change behind the engine's back
while its listing (and so the staging plan) stays the same. Every range handed out is logged."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from localmodel.fetch import FetchOptions, download
from localmodel.sources.base import Digest, Listing, Settings
from localmodel.sources.local import LocalSource


class CRCSource(LocalSource):
    def __init__(self, uri: str, settings: Settings, digests: Path, log: Path) -> None:
        super().__init__(uri, settings)
        self.digests = json.loads(digests.read_text())
        self.log = log

    def list_files(self) -> Listing:
        listing = super().list_files()
        return dataclasses.replace(listing, files=tuple(
            dataclasses.replace(f, digest=Digest("crc64nvme", self.digests[f.path])) for f in listing.files))

    def read_range(self, path: str, offset: int, length: int) -> Iterator[memoryview]:
        position = offset
        for piece in super().read_range(path, offset, length):
            with open(self.log, "a") as out:  # before the engine sees it: a kill loses no record
                out.write(f"{path} {position} {position + len(piece)}\n")
            yield piece
            position += len(piece)


def run(source: str, dest: str, digests: str, log: str, rate: float | None) -> None:
    download(source, dest, options=FetchOptions(concurrency=2, chunk_size=1024 * 1024,
                                                checkpoint_size=256 * 1024, fsync=False,
                                                rate_limit=rate),
             source_factory=lambda uri, settings: CRCSource(uri, settings, Path(digests), Path(log)))


if __name__ == "__main__":
    run(*sys.argv[1:5], rate=float(sys.argv[5]) if len(sys.argv) > 5 else None)
