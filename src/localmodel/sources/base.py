"""The protocol every source implements, and the values it returns.

A source is opened for one model URI. It lists the model's files once, then serves byte ranges
of them, possibly from many threads at once (so implementations must be thread-safe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable


@dataclass(frozen=True)
class Digest:
    """A provider-given checksum of a whole file."""

    #: "sha256", "md5", "crc64nvme" / "crc32c" / "crc32" (S3 full-object checksums, GCS crc32c;
    #: base64 big-endian in the provider, hex here) or "s3-etag" (multipart ETag: md5 of part
    #: md5s, "-N" suffix; verified when part size is known).
    algorithm: str
    #: Lower-case hex (or the raw provider string for "s3-etag").
    value: str
    #: For "s3-etag" with a "-N" suffix: the part size the object was uploaded with (S3
    #: `HeadObject(PartNumber=1)` gives it). Without it a multipart ETag cannot be checked.
    part_size: int | None = None


def etag_parts(value: str) -> tuple[str, int | None]:
    """(lower-case body, part count) of an S3 ETag; the count is None for a single-part one."""
    etag = value.strip().strip('"')
    body, dash, count = etag.partition("-")
    return body.lower(), int(count) if dash and count.isdigit() else None


#: CRCs the engine computes per range as bytes arrive and combines (`fetch/hashing.py`). Cheap
#: and strong against corruption, but forgeable: never the anchor of a peer's bytes.
COMBINABLE = frozenset({"crc64nvme", "crc32c", "crc32"})


def digest_check(digest: Digest | None, *, verify_md5: bool = True) -> str:
    """How the engine checks a file against its provider digest: "sha256", "md5" (also a
    single-part S3 ETag), "s3-etag" (multipart, part MD5s), one of `COMBINABLE`, or ""
    (not checked).
    `verify_md5=False` skips the md5-based ones. The engine's hasher and the peers' trust rule
    both follow this, so a peer is trusted exactly where the engine will check its bytes."""
    if digest is None:
        return ""
    algorithm = digest.algorithm.lower()
    if algorithm == "sha256":
        return "sha256"
    if algorithm in COMBINABLE:
        return algorithm
    if algorithm == "md5":
        return "md5" if verify_md5 else ""
    if algorithm == "s3-etag" and verify_md5:
        if etag_parts(digest.value)[1] is None:
            return "md5"
        return "s3-etag" if digest.part_size else ""
    return ""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model, as the source lists it."""

    #: Relative POSIX path inside the model folder. Validated by the engine before any write.
    path: str
    #: Size in bytes.
    size: int
    #: The provider's checksum, when it gives one: the cheapest it guarantees (the engine
    #: verifies this one).
    digest: Digest | None = None
    #: An opaque version tag (ETag, generation, blob sha) used to detect a change mid-download.
    version: str | None = None
    #: False if the source can only stream the file from its start (e.g. an HTTP server
    #: without Range support); the engine then reads it in one request and never splits it.
    seekable: bool = True
    #: When `digest` is a CRC (`COMBINABLE`): a cryptographic digest of the same bytes that the
    #: provider also guarantees (an S3 ETag, GCS md5Hash), or None. A CRC catches corruption
    #: but a peer can forge it, so bytes from peers are checked against this instead
    #: (`peers/protocol.py`, `peers/source.py`).
    anchor: Digest | None = None


@dataclass(frozen=True)
class Layer:
    """How one listed file (an OCI blob) becomes part of the model, for a listing made of
    layers rather than of the model's own files. The engine fetches and verifies every listed
    file into staging as usual, then applies the listing's layers in order (`fetch/layers.py`).
    """

    #: The listed file (a blob) this layer is made from.
    blob: str
    #: "file": the blob is one model file, placed at `path`. "tar": a tar archive (compressed
    #: as `compression` says) whose members go below the folder `path` ("" = the model root).
    kind: str
    path: str = ""
    #: "tar" only: keep only the members below this folder of the archive, named relative to
    #: it ("models" for a KServe modelcar image); "" keeps every member.
    subtree: str = ""
    #: "tar" only: "", "gzip" or "zstd".
    compression: str = ""
    #: "tar" only: OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what earlier layers wrote,
    #: and later layers may replace earlier files (image layers). Without it (ModelPack), two
    #: layers writing one path is an UnsafePathError.
    whiteouts: bool = False


@dataclass(frozen=True)
class Listing:
    """What a model is made of, at one resolved revision."""

    files: tuple[RemoteFile, ...]
    #: The exact revision the files belong to (HF commit sha, object generation...), if any.
    revision: str | None = None
    #: Extra facts worth keeping in the manifest. One key steers the engine: like KServe, it
    #: unpacks a listing made of exactly one zip/tar(.gz|.bz2|.xz) file; a source whose
    #: archives must stay packed (Hugging Face) sets {"archive": "none"}.
    details: Mapping[str, str] = field(default_factory=dict)
    #: Non-empty for a model assembled from layers (OCI): `files` are then blobs, fetched into
    #: staging and verified, and the model's files are what these layers make of them, in order.
    layers: tuple[Layer, ...] = ()


@runtime_checkable
class Source(Protocol):
    """A model location that can list its files and read byte ranges of them."""

    #: The URI this source was opened for, with any credentials removed.
    uri: str

    def list_files(self) -> Listing:
        """List every file of the model. Raises a `localmodel.errors` error on failure."""
        ...

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
        """Yield the bytes [offset, offset+length) of `path`, in order, in chunks of any size.

        A source may yield a memoryview of a buffer it reuses: each item is only valid until
        the next one is requested (the engine writes it out before asking for more).
        Raises `SourceUnavailableError` for transient failures (the caller retries from the
        last byte it received), and a permanent error otherwise. If the file changed since
        `list_files` (its version no longer matches), raise `IntegrityError`.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...


Settings = Mapping[str, str]
"""Environment-style settings for a source (e.g. AWS_ACCESS_KEY_ID, HF_TOKEN), never os.environ."""

#: Setting: the most files one listing may hold. The engine sets it from FetchOptions.max_files,
#: so a listing of millions of entries stops early instead of filling the agent's memory.
MAX_FILES_SETTING = "LOCALMODEL_MAX_FILES"


class ListingLimit:
    """Counts a listing as it grows, page by page; TooManyFilesError past the limit."""

    def __init__(self, settings: Settings, what: str) -> None:
        raw = settings.get(MAX_FILES_SETTING) or ""
        self.limit = int(raw) if raw.isdigit() and int(raw) > 0 else None
        self.what = what

    def check(self, count: int) -> None:
        if self.limit is not None and count > self.limit:
            from localmodel.errors import TooManyFilesError

            raise TooManyFilesError(
                f"{self.what} lists more than {self.limit} files; raise the limit (--max-files) "
                "if the model really has that many")


def size_from_listing(value: object, what: str) -> int:
    """A file size as a listing gives it (number or digits), checked: a hostile or broken
    server must not get a traceback, a negative size or a float through."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        size = -1
    elif isinstance(value, int):
        size = value
    else:
        size = int(value) if value.strip().isdigit() else -1
    if size < 0:
        from localmodel.errors import InvalidListingError

        raise InvalidListingError(f"{what}: the listing gives {str(value)[:40]!r} as a file size")
    return size


Entry = TypeVar("Entry")


def prefix_or_object(prefix: str, list_under: Callable[[str], Sequence[Entry]], name_of: Callable[[Entry], str],
                     stat: Callable[[str], Entry | None], missing: str) -> list[tuple[str, Entry]]:
    """An object store's model (S3, GCS, Azure Blob): every object under `prefix/`, named relative
    to it (folder placeholders, names ending in "/", skipped), else the one object named `prefix`
    itself, named by its last part. `list_under(p)` lists the store's entries whose names start
    with p; `stat(name)` is one object's entry, None when there is none. Nothing found raises
    SourceNotFoundError with `missing`."""
    strip = len(prefix) + 1 if prefix else 0
    chosen = [(name_of(entry)[strip:], entry) for entry in list_under(f"{prefix}/" if prefix else "")
              if not name_of(entry).endswith("/")]
    if not chosen and prefix:
        single = stat(prefix)
        if single is not None:
            chosen = [(prefix.rsplit("/", 1)[-1], single)]
    if not chosen:
        from localmodel.errors import SourceNotFoundError

        raise SourceNotFoundError(missing)
    return chosen


class ListedOnce:
    """One origin source for a whole download, listed once by whichever step asks first: every
    step (adoption, the capacity check, the peer fill, the engine) gets this same source and its
    one listing. Reads go to the source that listed, whose conditional reads (ETag, generation)
    depend on that listing. Steps may `close()` it; the download's owner `release()`s it once,
    after all of them."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.uri = source.uri
        self._listing: Listing | None = None
        self._lock = threading.Lock()

    def list_files(self) -> Listing:
        with self._lock:
            if self._listing is None:
                self._listing = self.source.list_files()
            return self._listing

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes | memoryview]:
        return self.source.read_range(path, offset, length)

    def close(self) -> None:
        """Nothing: the owner releases the source after the last step."""

    def release(self) -> None:
        self.source.close()

    def open(self, uri: str, settings: Settings) -> Source:
        """A `SourceFactory` that hands out this source (the download's URI and settings)."""
        return self
