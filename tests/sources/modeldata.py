"""A small model with the shapes that matter to a source: nesting, an empty file, a file larger
than 8 MiB (so it spans many chunks and ranges), and a digest helper to check what sources list."""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Iterator

import google_crc32c

from localmodel.sources.base import COMBINABLE, Digest, Listing, Source

BIG = "weights/model-00001-of-00001.safetensors"


def sample_model(seed: int = 0) -> dict[str, bytes]:
    """Relative path -> content. Deterministic for a given seed."""
    rnd = random.Random(seed)
    return {
        "config.json": b'{"architectures": ["TinyForTests"], "seed": %d}\n' % seed,
        "empty.txt": b"",
        "tokenizer/tokenizer.json": rnd.randbytes(3001),
        BIG: rnd.randbytes(9 * 1024 * 1024 + 12345),
        "weights/nested/deep/extra.bin": rnd.randbytes(70001),
    }


def digest_of(algorithm: str, data: bytes) -> str:
    """What `Digest.value` must be for `data` under `algorithm`."""
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    if algorithm == "md5":
        return hashlib.md5(data).hexdigest()
    if algorithm == "crc32c":
        return f"{google_crc32c.value(data):08x}"
    if algorithm == "crc32":
        return f"{zlib.crc32(data):08x}"
    if algorithm == "crc64nvme":
        return crc64nvme(data)
    raise ValueError(f"cannot compute {algorithm} without knowing the upload's parts")


def crc64nvme(data: bytes) -> str:
    """CRC-64/NVME as S3 defines it (reflected polynomial 0x9A6C9329AC4BC9B5, init and final
    xor all ones), from a 256-entry table: independent of awscrt, which the product uses."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc = _CRC64_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return (crc ^ 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big").hex()


def _crc64_entry(index: int) -> int:
    crc = index
    for _ in range(8):
        crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return crc


_CRC64_TABLE = [_crc64_entry(i) for i in range(256)]


def s3_multipart_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives a multipart upload: md5 of the parts' md5s, then -<parts>."""
    parts = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    joined = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(joined).hexdigest()}-{len(parts)}"


def read_all(source: Source, path: str, offset: int, length: int) -> bytes:
    # A source may reuse one buffer for every chunk: copy each before asking for the next.
    return b"".join([bytes(chunk) for chunk in source.read_range(path, offset, length)])


def check_digest(digest: Digest | None, data: bytes, algorithms: set[str]) -> None:
    assert digest is not None, "expected a digest"
    assert digest.algorithm in algorithms, digest
    assert digest.value == digest_of(digest.algorithm, data), digest


def check_listing(listing: Listing, model: dict[str, bytes], *,
                  algorithms: set[str] | None = None, anchors: set[str] | None = None) -> None:
    """Same paths and sizes as `model`; digests (when `algorithms` is given) match the bytes,
    and so do the anchors beside CRC digests (when `anchors` is given)."""
    assert sorted(f.path for f in listing.files) == sorted(model)
    for remote in listing.files:
        assert remote.size == len(model[remote.path]), remote
        if algorithms is not None:
            check_digest(remote.digest, model[remote.path], algorithms)
        if anchors is not None and remote.digest is not None and remote.digest.algorithm in COMBINABLE:
            check_digest(remote.anchor, model[remote.path], anchors)


def range_cases(size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pairs: start, middle, end, whole, one byte, across chunk edges."""
    yield 0, size
    if size == 0:
        return
    yield 0, min(size, 1000)
    yield size - 1, 1
    yield max(0, size - 777), min(size, 777)
    if size > 3 * 1024 * 1024:
        yield 1024 * 1024 + 7, 2 * 1024 * 1024 + 3  # middle, not chunk-aligned
        yield 512 * 1024 - 1, 2  # straddles the first chunk boundary


def check_reads(source: Source, model: dict[str, bytes]) -> None:
    """Exact bytes for every case of every file, and chunks bounded in size."""
    for path, data in model.items():
        for offset, length in range_cases(len(data)):
            chunks = [bytes(chunk) for chunk in source.read_range(path, offset, length)]
            assert b"".join(chunks) == data[offset:offset + length], (path, offset, length)
            assert all(len(c) <= 1024 * 1024 for c in chunks), "chunks must stay bounded"
