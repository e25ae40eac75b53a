"""The benchmark model: a few large random (incompressible) shards plus the small files a
Hugging Face checkpoint carries, generated once into a cache folder and reused.

    <cache>/<tag>/bucket/model/           the model (S3 bucket "bucket", HF repo "bench/model",
        model-0000i-of-0000N.safetensors    nginx path /model/...)
        config.json, tokenizer.json, ...
    <cache>/<tag>/sizes.json              written last: the model is complete

`tag` encodes the shard count and size, so every scale has its own copy.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

GiB = 1024**3
BUCKET = "bucket"
PREFIX = "model"
#: Small files of a typical checkpoint: (path, size in bytes at scale 1).
SMALL_FILES = (
    ("config.json", 1_024),
    ("generation_config.json", 200),
    ("model.safetensors.index.json", 24_000),
    ("special_tokens_map.json", 400),
    ("tokenizer.json", 9_000_000),
    ("tokenizer_config.json", 50_000),
)
_WRITE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Model:
    root: Path            # served root: its top-level folder is the bucket
    files: dict[str, int]  # relative path below the model folder -> size

    @property
    def folder(self) -> Path:
        return self.root / BUCKET / PREFIX

    @property
    def total(self) -> int:
        return sum(self.files.values())

    @property
    def big_files(self) -> list[str]:
        return [p for p in self.files if p.endswith(".safetensors")]


def shard_size(scale: float) -> int:
    """Bytes per shard: `scale` GiB, rounded to whole 4 KiB pages, at least 64 KiB."""
    return max(64 * 1024, int(scale * GiB) // 4096 * 4096)


def layout(shards: int, scale: float) -> dict[str, int]:
    size = shard_size(scale)
    files = {f"model-{i:05d}-of-{shards:05d}.safetensors": size for i in range(1, shards + 1)}
    for path, small in SMALL_FILES:
        files[path] = max(64, int(small * min(1.0, scale * 4)))
    return files


def ensure_model(cache: Path, shards: int, scale: float) -> Model:
    """The model for this shape, generating it on first use."""
    files = layout(shards, scale)
    size = shard_size(scale)
    root = cache / f"{shards}x{size}"
    model = Model(root, files)
    marker = root / "sizes.json"
    if marker.exists() and json.loads(marker.read_text()) == files:
        return model
    model.folder.mkdir(parents=True, exist_ok=True)
    for path, length in files.items():
        target = model.folder / path
        if path.endswith(".json"):
            _write_text(target, length, seed=path)
        else:
            _write_random(target, length)
    marker.write_text(json.dumps(files, indent=1))
    return model


def _write_random(path: Path, length: int) -> None:
    with open(path, "wb") as handle:
        remaining = length
        while remaining:
            block = os.urandom(min(_WRITE, remaining))
            handle.write(block)
            remaining -= len(block)


def _write_text(path: Path, length: int, seed: str) -> None:
    """JSON-looking text of exactly `length` bytes (content does not matter, size does)."""
    rng = random.Random(seed)
    words = [f'"k{rng.randrange(10**6)}": {rng.randrange(10**9)}' for _ in range(length // 8 + 8)]
    text = ("{" + ", ".join(words))[: length - 2] + "}\n"
    path.write_text(text)


def identical(expected: Path, actual: Path) -> bool:
    """Byte-for-byte comparison of two files."""
    if not actual.is_file() or actual.stat().st_size != expected.stat().st_size:
        return False
    left, right = bytearray(_WRITE), bytearray(_WRITE)
    with open(expected, "rb", buffering=0) as a, open(actual, "rb", buffering=0) as b:
        while True:
            n = a.readinto(left)
            m = b.readinto(right)
            if n != m:
                return False
            # whole buffers compare with one memcmp; only the last block is sliced
            if (left != right) if n == _WRITE else (left[:n] != right[:n]):
                return False
            if not n:
                return True
