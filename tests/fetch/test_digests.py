"""Provider digests: each algorithm accepts the right bytes and refuses one flipped bit; the
digest computed is the one the manifest keeps (one hash pass per byte); CRCs of ranges added
in any order combine into the whole file's."""

import hashlib
import random
import zlib

import blake3
import google_crc32c
import pytest

from localmodel.errors import IntegrityError
from localmodel.fetch.hashing import LOCAL_ALGORITHM, FileHasher, crc_update, file_hexdigest, new_hasher
from localmodel.sources.base import Digest

DATA = bytes(range(256)) * 4099  # not a multiple of any part size below
BAD = DATA[:1000] + bytes([DATA[1000] ^ 1]) + DATA[1001:]


def s3_etag(data: bytes, part: int) -> str:
    md5s = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-{len(md5s)}"'


def crc64nvme_reference(data: bytes) -> str:
    """CRC-64/NVME from its definition (reflected polynomial 0x9A6C9329AC4BC9B5, init and
    final xor all ones), bit by bit: independent of awscrt, which the product uses."""
    crc = 0xFFFFFFFFFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x9A6C9329AC4BC9B5 if crc & 1 else 0)
    return (crc ^ 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big").hex()


def feed(hasher: FileHasher, data: bytes, piece: int = 7777) -> None:
    for offset in range(0, len(data), piece):
        hasher.update(memoryview(data)[offset:offset + piece])


DIGESTS = [
    Digest("sha256", hashlib.sha256(DATA).hexdigest()),
    Digest("md5", hashlib.md5(DATA).hexdigest()),
    Digest("s3-etag", '"' + hashlib.md5(DATA).hexdigest() + '"'),
    Digest("s3-etag", s3_etag(DATA, 65536), part_size=65536),
    Digest("s3-etag", s3_etag(DATA, 100_000).upper(), part_size=100_000),
    Digest("crc32c", google_crc32c.Checksum(DATA).digest().hex()),
    Digest("crc32", zlib.crc32(DATA).to_bytes(4, "big").hex()),
    Digest("crc64nvme", crc64nvme_reference(DATA)),
]


@pytest.mark.parametrize("digest", DIGESTS, ids=lambda d: f"{d.algorithm}-{d.part_size}")
def test_matching_digest_is_checked_and_kept_as_the_local_digest(digest: Digest) -> None:
    hasher = FileHasher(digest)
    feed(hasher, DATA)
    result = hasher.finish("w.bin", len(DATA))
    assert result.provider_checked
    kind = "md5" if digest.algorithm == "s3-etag" and digest.part_size is None else digest.algorithm
    assert result.local is not None and result.local.algorithm == kind
    # one pass: no sha256 besides a cheaper provider digest
    assert result.sha256 == (hashlib.sha256(DATA).hexdigest() if kind == "sha256" else None)


@pytest.mark.parametrize("digest", DIGESTS, ids=lambda d: f"{d.algorithm}-{d.part_size}")
def test_one_flipped_bit_is_caught(digest: Digest) -> None:
    hasher = FileHasher(digest)
    feed(hasher, BAD)
    with pytest.raises(IntegrityError, match="w.bin"):
        hasher.finish("w.bin", len(BAD))


@pytest.mark.parametrize("algorithm", ["crc64nvme", "crc32c", "crc32"])
@pytest.mark.parametrize("data", [DATA, BAD], ids=["good", "flipped"])
def test_crcs_of_ranges_in_any_order_combine_into_the_file_crc(algorithm: str, data: bytes) -> None:
    [digest] = [d for d in DIGESTS if d.algorithm == algorithm]
    cuts = sorted(random.Random(7).sample(range(1, len(data)), 40))
    ranges = list(zip([0, *cuts], [*cuts, len(data)], strict=True))
    random.Random(8).shuffle(ranges)
    hasher = FileHasher(digest)
    assert hasher.combinable
    for start, end in ranges:
        hasher.add_range(start, end, crc_update(algorithm, memoryview(data)[start:end]))
    if data is DATA:
        assert hasher.finish("w.bin", len(data)).local == Digest(algorithm, digest.value)
    else:
        with pytest.raises(IntegrityError, match="w.bin"):
            hasher.finish("w.bin", len(data))


def test_crc_of_an_empty_file() -> None:
    hasher = FileHasher(Digest("crc64nvme", crc64nvme_reference(b"")))
    assert hasher.finish("e", 0).provider_checked


def test_multipart_etag_without_part_size_is_left_unchecked() -> None:
    hasher = FileHasher(Digest("s3-etag", s3_etag(DATA, 65536)))
    feed(hasher, BAD)
    result = hasher.finish("w.bin", len(BAD))
    assert not result.provider_checked
    assert result.local == Digest("blake3", blake3.blake3(BAD).hexdigest())  # the manifest still gets one
    assert result.sha256 is None


def test_md5_can_be_skipped_for_speed() -> None:
    hasher = FileHasher(Digest("md5", "0" * 32), verify_md5=False)
    feed(hasher, DATA)
    result = hasher.finish("w.bin", len(DATA))
    assert not result.provider_checked
    assert result.local == Digest("blake3", blake3.blake3(DATA).hexdigest())


#: BLAKE3 of the empty input, from the official test vectors (BLAKE3-team/BLAKE3,
#: test_vectors/test_vectors.json): independent of the binding the product uses.
BLAKE3_EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


def test_no_digest_yields_the_local_blake3() -> None:
    """A source that gives no digest (plain HTTP, file://, pvc://) is hashed with BLAKE3 for the
    manifest: cryptographic like sha256, at more than twice its speed per core (issue 14)."""
    assert LOCAL_ALGORITHM == "blake3"
    hasher = FileHasher(None)
    feed(hasher, b"")
    result = hasher.finish("e", 0)
    assert result.local == Digest("blake3", BLAKE3_EMPTY)
    assert result.sha256 is None and not result.provider_checked
    hasher = FileHasher(None)
    feed(hasher, DATA)  # fed in pieces of every alignment: the same as in one call
    assert hasher.finish("w.bin", len(DATA)).local == Digest("blake3", blake3.blake3(DATA).hexdigest())


def test_a_scrub_recomputes_blake3_and_the_sha256_of_older_manifests(tmp_path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(DATA)
    assert file_hexdigest(path, "blake3") == blake3.blake3(DATA).hexdigest()
    assert file_hexdigest(path, "sha256") == hashlib.sha256(DATA).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert file_hexdigest(tmp_path / "e", "blake3") == BLAKE3_EMPTY
    hasher = new_hasher("blake3")
    hasher.update(memoryview(BAD))
    assert hasher.hexdigest() != blake3.blake3(DATA).hexdigest()
