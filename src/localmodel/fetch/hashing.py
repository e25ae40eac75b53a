"""Per-file checksums: one hash pass per byte, with the cheapest digest that vouches for it.

Each file is hashed with exactly one algorithm, chosen from the provider's digest
(`sources.base.digest_check`):

    crc64nvme, crc32c, crc32   "combinable": each fetched range is checksummed from memory as
                               its bytes arrive, in any order, and the ranges' CRCs are
                               combined at the end (awscrt `combine_*`): no byte is ever read
                               back, and nothing waits for the bytes before it (S3 full-object
                               checksums, GCS crc32c)
    sha256                     sequential (Hugging Face LFS oid, S3 SHA-256 checksum, OCI)
    md5, s3-etag               sequential (Azure Content-MD5, S3 ETags without a checksum)
    none given                 sequential BLAKE3, for the manifest only (plain HTTP, file://,
                               pvc://, small Hugging Face git files): `LOCAL_ALGORITHM`

The digest computed is also the file's *local* digest, the one the manifest keeps for scrubs
(`ManifestFile.local`): a second hash only to have a sha256 would double the CPU per byte.
Where the source guarantees nothing, the local digest only has to be collision-resistant (it
names content-store entries, `fetch/blobs.py`) and cheap: BLAKE3 is a 256-bit cryptographic
hash like sha256, at ~3.8 GB/s on one core here against sha256's 1.6 (SHA-NI).

Provider digest values are lower-case hex (CRCs as their big-endian bytes), except "s3-etag":
"<md5 of part md5s>-<parts>", checked when `Digest.part_size` is known.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
from awscrt import checksums as _crc

from localmodel.errors import IntegrityError
from localmodel.fetch import chaining
from localmodel.sources.base import COMBINABLE, Digest, digest_check, etag_parts

logger = logging.getLogger(__name__)

_READ_SIZE = 1024 * 1024
#: The local digest of a file whose source gives no digest to check (see above). Manifests
#: written before it hold sha256 there, which scrubs still recompute (`new_hasher`).
LOCAL_ALGORITHM = "blake3"

#: algorithm -> (checksum(data, previous), combine(crc1, crc2, length2), width in bytes)
_CRCS: dict[str, tuple[Any, Any, int]] = {
    "crc64nvme": (_crc.crc64nvme, _crc.combine_crc64nvme, 8),
    "crc32c": (_crc.crc32c, _crc.combine_crc32c, 4),
    "crc32": (_crc.crc32, _crc.combine_crc32, 4),
}
assert set(_CRCS) == COMBINABLE


def crc_update(algorithm: str, data: memoryview | bytes, previous: int = 0) -> int:
    """The CRC of `data`, continuing from `previous` (the CRC of the bytes before it)."""
    return _CRCS[algorithm][0](data, previous)


@dataclass(frozen=True)
class HashResult:
    #: The digest computed over the file's bytes (kept in the manifest for scrubs), None when
    #: the download ran without verification (`FetchOptions.verify=False`).
    local: Digest | None
    #: Whether the provider digest was compared (False: none given, or not checkable).
    provider_checked: bool

    @property
    def sha256(self) -> str | None:
        return self.local.value if self.local is not None and self.local.algorithm == "sha256" else None


class _PartMD5:
    """MD5 of each fixed-size part, for S3 multipart ETags."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.parts: list[bytes] = []
        self._current = hashlib.md5(usedforsecurity=False)
        self._filled = 0

    def update(self, data: memoryview | bytes) -> None:
        data = memoryview(data)
        while len(data):
            take = min(len(data), self.part_size - self._filled)
            self._current.update(data[:take])
            self._filled += take
            data = data[take:]
            if self._filled == self.part_size:
                self.parts.append(self._current.digest())
                self._current = hashlib.md5(usedforsecurity=False)
                self._filled = 0

    def hexdigest(self) -> str:
        parts = list(self.parts)
        if self._filled or not parts:
            parts.append(self._current.digest())
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class _SequentialCRC:
    """A CRC fed in order (scrubs, and `update` callers), with hashlib's interface."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.value = 0

    def update(self, data: memoryview | bytes) -> None:
        self.value = crc_update(self.algorithm, data, self.value)

    def hexdigest(self) -> str:
        return self.value.to_bytes(_CRCS[self.algorithm][2], "big").hex()


def new_hasher(algorithm: str, part_size: int | None = None) -> Any:
    """A hashlib-like object (`update`, `hexdigest`) for any local digest's algorithm."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        # One thread: the download's own threads already keep the cores busy, and a scrub
        # or the engine's hash pool must not take more than the core it runs on.
        return blake3.blake3()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "s3-etag":
        assert part_size
        return _PartMD5(part_size)
    return _SequentialCRC(algorithm)


def _expected(digest: Digest, kind: str) -> str:
    if kind == "md5" and digest.algorithm.lower() == "s3-etag":
        return etag_parts(digest.value)[0]  # a single-part ETag is the MD5
    return digest.value.strip().strip('"').lower()


class FileHasher:
    """One file's hash. The bytes in order (`update`: adoption, scrubs, the engine's
    sequential hashes), or, for combinable algorithms, the CRC of each range in any order
    (`add_range`: the engine). `finish()` checks the provider digest and returns the local
    digest.

    A sha256 also keeps its chaining value (`fetch.chaining`): with `checkpoint_every`, the
    value at every multiple of it is kept for `take_checkpoints` (the pieces peers are offered
    while this download runs), and `jump` moves the hash past bytes whose chaining values a
    source has already checked (a piece filled from peers), without hashing them again."""

    def __init__(self, digest: Digest | None, *, verify_md5: bool = True, checkpoint_every: int = 0) -> None:
        self.digest = digest
        kind = digest_check(digest, verify_md5=verify_md5)
        #: The algorithm whose provider value is checked; "" means none: the file is hashed
        #: with `LOCAL_ALGORITHM` for the manifest alone.
        self.kind = kind
        self.algorithm = kind or LOCAL_ALGORITHM
        self.combinable = self.algorithm in COMBINABLE
        part_size = digest.part_size if digest is not None else None
        self.chaining = self.algorithm == "sha256"
        self._hash: Any = (None if self.combinable else chaining.Sha256() if self.chaining
                           else new_hasher(self.algorithm, part_size))
        #: Combinable: start -> (end, crc) of every range hashed so far.
        self._ranges: dict[int, tuple[int, int]] = {}
        self._checkpoint_every = checkpoint_every if self.chaining else 0
        self._checkpoints: list[chaining.ChainState] = []
        #: The file's sha256 once `jump` took its hash to the end.
        self._final: bytes | None = None

    def update(self, data: memoryview | bytes) -> None:
        """The next bytes of the file, in order."""
        if self.combinable:
            start = self._ranges.get(-1, (0, 0))[0]
            previous = self._ranges[-1][1] if -1 in self._ranges else 0
            self._ranges[-1] = (start + len(data), crc_update(self.algorithm, data, previous))
        elif self._checkpoint_every:
            if self._final is not None:  # pragma: no cover - would be an engine bug
                raise IntegrityError("bytes hashed past the end of a file")
            view = memoryview(data).cast("B")
            every = self._checkpoint_every
            while len(view):
                take = min(len(view), every - self._hash.length % every)
                self._hash.update(view[:take])
                view = view[take:]
                if self._hash.length % every == 0:
                    self._checkpoints.append(self._hash.state())
        else:
            self._hash.update(data)

    def chain_state(self) -> chaining.ChainState | None:
        """The sha256 chaining value so far; None for other algorithms, between blocks, or
        once the hash reached the end of the file."""
        if not self.chaining or self._final is not None or self._hash.length % chaining.BLOCK:
            return None
        return self._hash.state()

    def jump(self, end: int, value: bytes, *, final: bool) -> None:
        """Continue as if the bytes up to `end` were hashed and left the chaining value
        `value`, or, `final`, the whole file's sha256 `value`. Only for values checked from
        this hasher's own `chain_state()` over the very bytes the engine wrote."""
        assert self.chaining and self._final is None
        if final:
            self._final = value
        else:
            self._hash = chaining.Sha256(chaining.ChainState(end, value))
            if self._checkpoint_every and end % self._checkpoint_every == 0:
                self._checkpoints.append(chaining.ChainState(end, value))

    def take_checkpoints(self) -> list[chaining.ChainState]:
        taken, self._checkpoints = self._checkpoints, []
        return taken

    def add_range(self, start: int, end: int, crc: int) -> None:
        """The CRC of bytes [start, end) (combinable algorithms). Callers add disjoint ranges."""
        if end > start:
            self._ranges[start] = (end, crc)

    def _combined(self, path: str, size: int) -> str:
        _, combine, width = _CRCS[self.algorithm]
        if -1 in self._ranges:  # fed in order with `update`: one range from byte 0
            self._ranges[0] = self._ranges.pop(-1)
        value, position = 0, 0
        for start in sorted(self._ranges):
            end, crc = self._ranges[start]
            if start != position:  # pragma: no cover - would be an engine bug
                raise IntegrityError(f"{path!r}: checksummed ranges do not cover the file "
                                     f"(gap or overlap at byte {position})")
            value = combine(value, crc, end - start) if position else crc
            position = end
        if position != size:  # pragma: no cover - would be an engine bug
            raise IntegrityError(f"{path!r}: checksummed ranges end at {position} of {size} bytes")
        return value.to_bytes(width, "big").hex()

    def finish(self, path: str, size: int) -> HashResult:
        """The local digest; raises IntegrityError if the provider digest disagrees."""
        if self.combinable:
            actual = self._combined(path, size)
        else:
            actual = self._final.hex() if self._final is not None else self._hash.hexdigest()
        digest = self.digest
        part_size = digest.part_size if digest is not None and self.algorithm == "s3-etag" else None
        local = Digest(self.algorithm, actual, part_size=part_size)
        if not self.kind:
            if digest is not None:
                logger.debug("provider digest not checked", extra={"path": path,
                                                                   "algorithm": digest.algorithm})
            return HashResult(local, provider_checked=False)
        assert digest is not None
        expected = _expected(digest, self.kind)
        if actual != expected:
            raise IntegrityError(
                f"{path!r}: {digest.algorithm} is {actual}, the source says {expected}")
        return HashResult(local, provider_checked=True)


class NoHasher:
    """Stands in for `FileHasher` when verification is off: hashes nothing, vouches for nothing."""

    digest: Digest | None = None
    combinable = False
    chaining = False

    def update(self, data: memoryview | bytes) -> None:
        """Nothing to do: the engine does not even call this when verification is off."""

    def add_range(self, start: int, end: int, crc: int) -> None:
        """Nothing to do, as for `update`."""

    def chain_state(self) -> None:
        return None

    def take_checkpoints(self) -> list[chaining.ChainState]:
        return []

    def finish(self, path: str, size: int) -> HashResult:
        return HashResult(None, provider_checked=False)


def crc_of_file(fd: int, algorithm: str, start: int, end: int) -> int:
    """The CRC of bytes [start, end) of an open file: only for ranges a resumed download
    finds on disk from an earlier run (its in-memory CRCs died with it)."""
    buffer = memoryview(bytearray(min(_READ_SIZE, max(1, end - start))))
    value, position = 0, start
    while position < end:
        count = os.preadv(fd, [buffer[: min(len(buffer), end - position)]], position)
        if count == 0:
            raise IntegrityError("staging copy is short")
        value = crc_update(algorithm, buffer[:count], value)
        position += count
    return value


def file_digest(path: Path, digest: Digest) -> str:
    """`digest`'s algorithm over the file at `path` (a scrub), as hex."""
    return file_hexdigest(path, digest.algorithm, digest.part_size)


def file_sha256(path: Path) -> str:
    return file_hexdigest(path, "sha256")


def file_hexdigest(path: Path, algorithm: str, part_size: int | None = None) -> str:
    """One read of the file at `path` (never through a final symlink) into `algorithm`'s hasher."""
    hasher = new_hasher(algorithm, part_size)
    buffer = memoryview(bytearray(_READ_SIZE))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        while count := os.readv(fd, [buffer]):
            hasher.update(buffer[:count])
    finally:
        os.close(fd)
    return str(hasher.hexdigest())
