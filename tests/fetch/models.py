"""Test models: small trees of files with known content, and ways to compare them."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import blake3

from localmodel.fetch import FetchOptions
from localmodel.sources.base import Digest

KiB = 1024

#: Small chunks so that even test-sized files are split into many ranged requests.
SMALL_CHUNKS = FetchOptions(concurrency=4, chunk_size=64 * KiB, checkpoint_size=64 * KiB,
                            fsync=False)


def local_digest(data: bytes) -> Digest:
    """The digest the manifest keeps for a file whose source gives none (plain HTTP, file://):
    BLAKE3 (`fetch.hashing.LOCAL_ALGORITHM`), computed here by the reference binding."""
    return Digest("blake3", blake3.blake3(data).hexdigest())


def content(seed: str, size: int) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    block = hashlib.sha256(seed.encode()).digest() * 8  # 256 bytes
    whole, rest = divmod(size, len(block))
    data = bytearray()
    for index in range(whole):
        data += bytes((b + index) % 256 for b in block[:1]) + block[1:]
    return bytes(data + block[:rest])


NESTED = {
    "config.json": b'{"architectures": ["Test"]}\n',
    "empty.txt": b"",
    "weights/model-00001-of-00002.safetensors": content("a", 300 * KiB + 7),
    "weights/model-00002-of-00002.safetensors": content("b", 64 * KiB),
    "tokenizer/deep/er/vocab.txt": content("c", 5000),
    "tokenizer/deep/empty": b"",
}


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def read_tree(root: Path, *, skip_hidden: bool = False) -> dict[str, bytes]:
    found = {}
    for folder, dirs, names in os.walk(root):
        if skip_hidden and Path(folder) == root and ".localmodel" in dirs:
            dirs.remove(".localmodel")
        for name in names:
            path = Path(folder) / name
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def all_paths(root: Path) -> set[str]:
    return {str(Path(folder, name).relative_to(root))
            for folder, dirs, names in os.walk(root) for name in dirs + names}


def tar_bytes(members: Sequence[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()
