"""Provider digests: each algorithm accepts the right bytes and refuses one flipped bit."""

import hashlib

import pytest

from localmodel.errors import IntegrityError
from localmodel.fetch.hashing import FileHasher
from localmodel.sources.base import Digest

DATA = bytes(range(256)) * 4099  # not a multiple of any part size below
BAD = DATA[:1000] + bytes([DATA[1000] ^ 1]) + DATA[1001:]


def s3_etag(data: bytes, part: int) -> str:
    md5s = [hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(md5s)).hexdigest()}-{len(md5s)}"'


def feed(hasher: FileHasher, data: bytes, piece: int = 7777) -> None:
    for offset in range(0, len(data), piece):
        hasher.update(memoryview(data)[offset:offset + piece])


DIGESTS = [
    Digest("sha256", hashlib.sha256(DATA).hexdigest()),
    Digest("md5", hashlib.md5(DATA).hexdigest()),
    Digest("s3-etag", '"' + hashlib.md5(DATA).hexdigest() + '"'),
    Digest("s3-etag", s3_etag(DATA, 65536), part_size=65536),
    Digest("s3-etag", s3_etag(DATA, 100_000).upper(), part_size=100_000),
]


@pytest.mark.parametrize("digest", DIGESTS, ids=lambda d: f"{d.algorithm}-{d.part_size}")
def test_matching_digest_is_checked(digest: Digest) -> None:
    hasher = FileHasher(digest)
    feed(hasher, DATA)
    result = hasher.finish("w.bin")
    assert result.sha256 == hashlib.sha256(DATA).hexdigest()
    assert result.provider_checked


@pytest.mark.parametrize("digest", DIGESTS, ids=lambda d: f"{d.algorithm}-{d.part_size}")
def test_one_flipped_bit_is_caught(digest: Digest) -> None:
    hasher = FileHasher(digest)
    feed(hasher, BAD)
    with pytest.raises(IntegrityError, match="w.bin"):
        hasher.finish("w.bin")


def test_multipart_etag_without_part_size_is_left_unchecked() -> None:
    hasher = FileHasher(Digest("s3-etag", s3_etag(DATA, 65536)))
    feed(hasher, BAD)
    assert not hasher.finish("w.bin").provider_checked


def test_md5_can_be_skipped_for_speed() -> None:
    hasher = FileHasher(Digest("md5", "0" * 32), verify_md5=False)
    feed(hasher, DATA)
    assert not hasher.finish("w.bin").provider_checked


def test_crc32c_is_checked_when_google_crc32c_is_installed() -> None:
    crc32c = pytest.importorskip("google_crc32c")
    good = crc32c.Checksum(DATA).digest().hex()
    hasher = FileHasher(Digest("crc32c", good))
    feed(hasher, DATA)
    assert hasher.finish("w.bin").provider_checked
    hasher = FileHasher(Digest("crc32c", good))
    feed(hasher, BAD)
    with pytest.raises(IntegrityError):
        hasher.finish("w.bin")


def test_no_digest_still_yields_sha256() -> None:
    hasher = FileHasher(None)
    feed(hasher, b"")
    assert hasher.finish("e").sha256 == hashlib.sha256(b"").hexdigest()
