"""The wire format between node agents that fill each other (pure, shared by client and server).

A serving agent answers, for storage keys it holds complete (a manifest in
`<root>/manifests/<key>.json`):

    GET /v1/models/<key>/manifest            the manifest JSON as written by the engine
    GET /v1/models/<key>/pieces/<path>       sha256 of every PIECE_SIZE piece of <path>,
                                             32 raw bytes each, in order
    GET /v1/models/<key>/chain/<path>        for a file whose origin digest is a sha256: the
                                             sha256 chaining value after every piece, the
                                             last entry being the file's sha256 (see below)
    GET /v1/models/<key>/files/<path>        the file's bytes; one `Range: bytes=a-b` allowed

and, for a key it is still downloading (see `peers.partial`):

    GET /v1/models/<key>/partial             the listing the download follows (JSON)
    GET /v1/models/<key>/pieces/<path>       the same tables, zeros for pieces not there yet,
    GET /v1/models/<key>/chain/<path>
                                             with header X-Localmodel-Partial: <pieces present>;
                                             ?known=N&wait=S waits up to S seconds (at most
                                             MAX_WAIT) for more than N pieces (a long poll)
    GET /v1/models/<key>/files/<path>        a range whose pieces are all written; 425 Too Early
                                             otherwise

`<path>` is the manifest path, percent-encoded (`/` kept). Every request carries
`Authorization: Bearer <token>` (see `localmodel.peers.auth`).

Trust: none of this is believed on its own. The file list, sizes and digests come from the
origin's listing; a peer is used for a file only when its manifest agrees with that listing
(`compatible`) and the origin guarantees a digest of the file that a peer cannot forge
(`peer_digest`: sha256, md5 or an S3 ETag). Where the origin's cheapest digest is a CRC (S3's
CRC64NVME, GCS crc32c), which a peer could forge, the anchor beside it (the ETag, md5Hash) is
the one a file filled from peers is checked against (`anchored`); a file from the origin alone
is checked with the CRC.
The piece table lets the receiver check every piece as it arrives, so a bad piece is refused
before it is written; the engine's whole-file digest check against the origin is the backstop
that catches a lying table.

Two kinds of table (`table_kind`, decided by the origin's listing, so both sides agree):
- "chain" (the origin digest is a sha256: Hugging Face, OCI, S3 SHA-256): entry i is the sha256
  chaining value after piece i (`fetch.chaining`), the last entry the file's sha256, which must
  be the origin's. Piece i is checked by hashing it from entry i-1 (the start value for piece 0)
  and comparing with entry i; a chain of checked pieces from the start value to the origin's
  sha256 *is* the whole-file check (a piece that passes from a lying entry breaks the chain at
  the next one, and the last link is the origin's own digest), so the receiver's engine takes
  each checked piece's chaining value instead of hashing the bytes again (`PeerSource.vouch`):
  one sha256 pass per byte. A partial table holds entries up to where its download's hash got
  (in order), recorded by the engine as its sha256 passes piece boundaries.
- "pieces" (an md5 or S3 ETag anchor beside a CRC): the sha256 of each piece, and the engine
  checks the whole file against the anchor afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from localmodel.api.keys import is_storage_key
from localmodel.fetch import chaining
from localmodel.sources.base import Digest, RemoteFile, digest_check

#: Bytes per verified piece. Small enough to buffer one per download thread (8 × 4 MiB), large
#: enough that a piece table is 8 KiB per GiB and per-request overhead stays negligible.
PIECE_SIZE = 4 * 1024 * 1024
DIGEST_SIZE = 32
API_PREFIX = "/v1/models/"
#: Header with the piece size a table was computed with.
PIECE_SIZE_HEADER = "X-Localmodel-Piece-Size"
#: Header on a partial table: how many pieces are present.
PARTIAL_HEADER = "X-Localmodel-Partial"
#: Longest long poll for a partial table, in seconds.
MAX_WAIT = 5.0
ZERO_DIGEST = bytes(DIGEST_SIZE)
#: Table kinds (see above); also the URL segment each is served under.
CHAIN = "chain"
PIECES = "pieces"


def manifest_url(endpoint: str, key: str) -> str:
    return f"{endpoint.rstrip('/')}{API_PREFIX}{key}/manifest"


def partial_url(endpoint: str, key: str) -> str:
    return f"{endpoint.rstrip('/')}{API_PREFIX}{key}/partial"


def pieces_url(endpoint: str, key: str, path: str, *, known: int | None = None, wait: float = 0.0,
               kind: str = PIECES) -> str:
    url = f"{endpoint.rstrip('/')}{API_PREFIX}{key}/{kind}/{quote(path, safe='/')}"
    return f"{url}?known={known}&wait={wait:g}" if known is not None and wait > 0 else url


def long_poll(raw_path: str) -> tuple[int, float]:
    """(known, wait) from a pieces URL's query; (-1, 0) when it asks for no wait."""
    query = parse_qs(raw_path.partition("?")[2])
    try:
        known = int(query.get("known", ["-1"])[0])
        wait = min(MAX_WAIT, max(0.0, float(query.get("wait", ["0"])[0])))
    except ValueError:
        return -1, 0.0
    return known, wait


def file_url(endpoint: str, key: str, path: str) -> str:
    return f"{endpoint.rstrip('/')}{API_PREFIX}{key}/files/{quote(path, safe='/')}"


@dataclass(frozen=True)
class PeerRequest:
    """A parsed request path."""

    key: str
    #: "manifest", "partial", "pieces", "chain" or "files".
    kind: str
    #: The file path for "pieces", "chain" and "files" (decoded), else "".
    path: str = ""


def parse_request_path(raw_path: str) -> PeerRequest | None:
    """The request a URL path names, or None when it names nothing this protocol serves."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith(API_PREFIX):
        return None
    key, _, rest = path[len(API_PREFIX):].partition("/")
    if not is_storage_key(key):
        return None
    if rest in ("manifest", "partial"):
        return PeerRequest(key, rest)
    kind, _, encoded = rest.partition("/")
    if kind not in (PIECES, CHAIN, "files") or not encoded:
        return None
    try:
        decoded = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
    return PeerRequest(key, kind, decoded)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """`Range: bytes=a-b` → (start, end) with end exclusive; None when absent (whole file);
    False when malformed, multi-range or unsatisfiable (answer 416)."""
    if header is None:
        return None
    if not header.startswith("bytes=") or "," in header:
        return False
    first, dash, last = header[6:].strip().partition("-")
    if not dash:
        return False
    if first == "":
        if not last.isdigit() or int(last) == 0 or size == 0:
            return False
        return max(0, size - int(last)), size
    if not first.isdigit() or (last and not last.isdigit()):
        return False
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        return False
    return start, end


# --- pieces ----------------------------------------------------------------------------------


def piece_count(size: int, piece_size: int = PIECE_SIZE) -> int:
    return (size + piece_size - 1) // piece_size


def piece_bounds(index: int, size: int, piece_size: int = PIECE_SIZE) -> tuple[int, int]:
    """[start, end) of piece `index` of a file of `size` bytes."""
    start = index * piece_size
    return start, min(size, start + piece_size)


def piece_matches(kind: str, index: int, count: int, piece_size: int, data: bytes | memoryview,
                  expected: bytes, previous: bytes | None) -> bool:
    """Whether piece `index` of `count` is `data`: its sha256 is `expected` ("pieces"), or,
    hashed from the chaining value `previous` (ignored for piece 0), it ends at `expected`:
    the next chaining value, or for the last piece the file's sha256 ("chain")."""
    if kind == PIECES:
        return hashlib.sha256(data).digest() == expected
    if index == 0:
        start = chaining.START
    elif previous is None or previous == ZERO_DIGEST:
        return False
    else:
        start = chaining.ChainState(index * piece_size, previous)
    if index == count - 1:
        return chaining.finish(start, data) == expected
    return len(data) == piece_size and chaining.advance(start, data).value == expected


@dataclass(frozen=True)
class PieceTable:
    """One entry per piece of one file, as some peer computed it (`kind`: see above). A
    partial table (a peer still downloading) has zeros for the pieces it does not hold yet."""

    piece_size: int
    digests: bytes
    partial: bool = False
    kind: str = PIECES

    def __len__(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]

    def first_difference(self, other: PieceTable) -> int | None:
        """The first piece where two tables of the same file disagree, or None."""
        for index in range(min(len(self), len(other))):
            if self.digest(index) != other.digest(index):
                return index
        return None if len(self) == len(other) else min(len(self), len(other))

    def entry(self, index: int) -> tuple[bytes, bytes | None]:
        """(entry `index`, the entry before it or None for piece 0): what piece `index` is
        checked against (`piece_matches`; a chain entry is checked from the one before)."""
        return self.digest(index), (self.digest(index - 1) if index > 0 else None)

    def matches(self, index: int, data: bytes | memoryview) -> bool:
        return piece_matches(self.kind, index, len(self), self.piece_size, data, *self.entry(index))

    def has(self, index: int) -> bool:
        return self.digest(index) != ZERO_DIGEST


def decode_table(body: bytes, size: int, piece_size: int, *, partial: bool = False,
                 kind: str = PIECES) -> PieceTable | None:
    """A table for a file of `size` bytes, or None when the body cannot be one."""
    if piece_size <= 0 or len(body) != piece_count(size, piece_size) * DIGEST_SIZE:
        return None
    if kind == CHAIN and piece_size % chaining.BLOCK:
        return None
    return PieceTable(piece_size, bytes(body), partial, kind)


# --- trust -----------------------------------------------------------------------------------


#: Origin digests a peer cannot forge: sha256, or md5 / S3 ETags (second preimages of md5 are out
#: of reach, unlike its collisions, which need control of both contents). A CRC is linear: any
#: bytes can be given any CRC by changing a few of them.
_CRYPTOGRAPHIC = ("sha256", "md5", "s3-etag")


def peer_digest(remote: RemoteFile, *, verify_md5: bool = True) -> Digest | None:
    """The origin digest that bytes of this file from peers must match: the file's digest when
    a peer cannot forge it, else its anchor (`RemoteFile.anchor`, beside a CRC); None when the
    origin gives neither (then no peer may serve the file)."""
    if digest_check(remote.digest, verify_md5=verify_md5) in _CRYPTOGRAPHIC:
        return remote.digest
    if remote.anchor is not None and digest_check(remote.anchor, verify_md5=verify_md5) in _CRYPTOGRAPHIC:
        return remote.anchor
    return None


def table_kind(remote: RemoteFile, *, verify_md5: bool = True) -> str:
    """The piece table peers exchange for this file: chaining values when the digest a file
    from peers is checked against is a sha256, per-piece sha256 otherwise."""
    digest = peer_digest(remote, verify_md5=verify_md5)
    return CHAIN if digest is not None and digest.algorithm.lower() == "sha256" else PIECES


def chain_end(remote: RemoteFile) -> bytes | None:
    """The last entry a chain table of this file must have: the origin's sha256."""
    digest = remote.digest
    if digest is None or digest.algorithm.lower() != "sha256":
        return None
    try:
        return bytes.fromhex(digest.value.strip().strip('"'))
    except ValueError:
        return None


def strong_digest(remote: RemoteFile, *, verify_md5: bool = True) -> bool:
    """Whether a file may come from peers: the engine can check it against an origin digest
    that a peer cannot forge (`peer_digest`)."""
    return peer_digest(remote, verify_md5=verify_md5) is not None


def anchored(remote: RemoteFile, *, verify_md5: bool = True) -> RemoteFile:
    """The listing entry the engine must verify a file filled from peers with: its digest
    replaced by the anchor when the digest itself is a forgeable CRC."""
    digest = peer_digest(remote, verify_md5=verify_md5)
    if digest is None or digest is remote.digest:
        return remote
    return dataclasses.replace(remote, digest=digest)


def _same_digest(listed: Digest, entry: Mapping[str, Any]) -> bool:
    if listed.algorithm.lower() == "sha256" and isinstance(entry.get("sha256"), str):
        return listed.value.lower() == str(entry["sha256"]).lower()
    recorded = entry.get("digest")
    if not isinstance(recorded, Mapping):
        return False
    return (str(recorded.get("algorithm", "")).lower() == listed.algorithm.lower()
            and str(recorded.get("value", "")).strip('"').lower()
            == listed.value.strip('"').lower())


def compatible(entry: Mapping[str, Any] | None, remote: RemoteFile) -> bool:
    """Whether a peer's manifest entry (or the listing entry of its download in progress)
    describes the same bytes as the origin's listing: same size and the same origin digest
    (a peer holding another revision is not used)."""
    if not entry or remote.digest is None:
        return False
    try:
        size = int(entry["size"])
    except (KeyError, TypeError, ValueError):
        return False
    # A peer filled from peers recorded the anchor it was checked against, not the CRC.
    return size == remote.size and (_same_digest(remote.digest, entry)
                                    or (remote.anchor is not None and _same_digest(remote.anchor, entry)))


def manifest_entries(manifest_json: str | bytes) -> dict[str, Mapping[str, Any]]:
    """path → entry of a peer's manifest (or of the listing its download follows); {} when it
    is neither (or an archive's: an unpacked model no longer holds the file the origin lists)."""
    try:
        raw = json.loads(manifest_json)
    except ValueError:
        return {}
    if not isinstance(raw, dict) or raw.get("archive") or not isinstance(raw.get("files"), list):
        return {}
    entries: dict[str, Mapping[str, Any]] = {}
    for item in raw["files"]:
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            entries[item["path"]] = item
    return entries
