"""Model folders for agent tests: random content, and checks that a copy is byte-exact."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from localmodel.api.keys import storage_key


def make_model(folder: Path, files: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Write files of the given sizes with pseudo-random bytes; return path → sha256."""
    digests: dict[str, str] = {}
    for index, (name, size) in enumerate(sorted(files.items())):
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        block = hashlib.sha256(f"{seed}:{index}:{name}".encode()).digest() * 2048  # 64 KiB pattern
        written = 0
        digest = hashlib.sha256()
        with open(target, "wb") as handle:
            while written < size:
                piece = block[: min(len(block), size - written)]
                # Vary every block so ranges cannot be confused with each other.
                piece = written.to_bytes(8, "little") + piece[8:] if len(piece) >= 8 else piece
                handle.write(piece)
                digest.update(piece)
                written += len(piece)
        digests[name] = digest.hexdigest()
    return digests


def tree_digests(folder: Path) -> dict[str, str]:
    """path → sha256 of every regular file below `folder` (symlinks not followed)."""
    found: dict[str, str] = {}
    for current, _dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(current) / name
            if path.is_symlink():
                continue
            found[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def model_dir(root: Path, uri: str) -> Path:
    """Where KServe (and localmodel) keep the model of `uri` under a node's root."""
    return root / "models" / storage_key(uri)
