"""Per-file checksums: sha256 always, plus whatever the provider's digest needs, in one pass.

Provider digests understood:
    sha256    hex; compared directly (Hugging Face LFS oid, RFC 9530 Repr-Digest)
    md5       hex (GCS md5Hash, Azure Content-MD5, single-part S3 ETag)
    crc32c    hex of the big-endian value (GCS); needs `google-crc32c`, else left unchecked
    s3-etag   "<md5 of part md5s>-<parts>"; checked when `Digest.part_size` is known
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from localmodel.errors import IntegrityError
from localmodel.sources.base import Digest, digest_check, etag_parts

logger = logging.getLogger(__name__)

try:  # optional: 11 GiB/s in C; the pure-Python fallback would be far too slow to use
    import google_crc32c as _crc32c  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c = None


@dataclass(frozen=True)
class HashResult:
    #: None when the download ran without verification (`FetchOptions.verify=False`).
    sha256: str | None
    #: Whether the provider digest was compared (False: none given, or not checkable).
    provider_checked: bool


class _PartMD5:
    """MD5 of each fixed-size part, for S3 multipart ETags."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.parts: list[bytes] = []
        self._current = hashlib.md5(usedforsecurity=False)
        self._filled = 0

    def update(self, data: memoryview) -> None:
        while len(data):
            take = min(len(data), self.part_size - self._filled)
            self._current.update(data[:take])
            self._filled += take
            data = data[take:]
            if self._filled == self.part_size:
                self.parts.append(self._current.digest())
                self._current = hashlib.md5(usedforsecurity=False)
                self._filled = 0

    def etag(self) -> str:
        parts = list(self.parts)
        if self._filled or not parts:
            parts.append(self._current.digest())
        return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class FileHasher:
    """Feed a file's bytes in order; `finish()` returns the sha256 and checks the provider digest."""

    def __init__(self, digest: Digest | None, *, verify_md5: bool = True) -> None:
        self.digest = digest
        self._sha256 = hashlib.sha256()
        self._extra: Any = None
        self._kind = ""
        kind = digest_check(digest, verify_md5=verify_md5)
        if kind == "md5":
            self._extra, self._kind = hashlib.md5(usedforsecurity=False), "md5"
        elif kind == "crc32c" and _crc32c is not None:
            self._extra, self._kind = _crc32c.Checksum(), "crc32c"
        elif kind == "s3-etag":
            assert digest is not None and digest.part_size
            self._extra, self._kind = _PartMD5(digest.part_size), "s3-etag"
        elif kind == "sha256":
            self._kind = "sha256"

    def update(self, data: memoryview | bytes) -> None:
        self._sha256.update(data)
        if self._kind == "crc32c" and isinstance(data, memoryview):
            # google-crc32c's C extension parses "y#", which refuses every memoryview; the copy
            # runs at memcpy speed and only GCS downloads pay it
            data = bytes(data)
        if self._extra is not None:
            self._extra.update(data if self._kind != "s3-etag" else memoryview(data))

    def finish(self, path: str) -> HashResult:
        """The file's sha256; raises IntegrityError if the provider digest disagrees."""
        sha256 = self._sha256.hexdigest()
        digest = self.digest
        if digest is None:
            return HashResult(sha256, provider_checked=False)
        expected = digest.value.strip().strip('"').lower()
        if self._kind == "sha256":
            actual = sha256
        elif self._kind == "md5":
            actual = self._extra.hexdigest()
            expected = etag_parts(digest.value)[0] if digest.algorithm == "s3-etag" else expected
        elif self._kind == "crc32c":
            actual = self._extra.digest().hex()
        elif self._kind == "s3-etag":
            actual, expected = self._extra.etag(), digest.value.strip().strip('"').lower()
        else:
            logger.debug("provider digest not checked", extra={"path": path,
                                                               "algorithm": digest.algorithm})
            return HashResult(sha256, provider_checked=False)
        if actual != expected:
            raise IntegrityError(
                f"{path!r}: {digest.algorithm} is {actual}, the source says {expected}")
        return HashResult(sha256, provider_checked=True)


class NoHasher:
    """Stands in for `FileHasher` when verification is off: hashes nothing, vouches for nothing."""

    digest: Digest | None = None

    def update(self, data: memoryview | bytes) -> None:
        """Nothing to do: the engine does not even call this when verification is off."""

    def finish(self, path: str) -> HashResult:
        return HashResult(None, provider_checked=False)
