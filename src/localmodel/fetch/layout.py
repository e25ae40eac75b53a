"""Where a model's published folder, its staging area and its manifest live.

Three layouts, all keeping staging on the destination's filesystem so publishing is a rename:

`Layout.in_store(root, key)`, the node agent's store (KServe's on-disk layout plus two
siblings that KServe's orphan sweep of `models/` never sees):

    <root>/
    ├── models/<key>/          the model, exactly the source's files (what pods mount)
    ├── manifests/<key>.json   the proof the folder is complete (written last)
    ├── staging/<key>/         work in progress, see `localmodel.fetch.staging`
    └── blobs/<alg>/<hex>      the content store (sha256, blake3): shared files, see `blobs`

`Layout.beside(dest)`, any other folder (the CLI):

    <parent>/<name>/                          the model
    <parent>/.localmodel/manifests/<name>.json
    <parent>/.localmodel/staging/<name>/

`Layout.inside(dest)`, when the destination is itself a mount point (a storage-initializer
`/mnt/models` volume) so neither it nor its parent can be renamed:

    <dest>/<files...>                 moved in one entry at a time at publish
    <dest>/.localmodel/manifest.json
    <dest>/.localmodel/staging/

A folder whose manifest is missing is incomplete, whatever it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HIDDEN = ".localmodel"


@dataclass(frozen=True)
class Layout:
    #: The published model folder.
    dest: Path
    #: Work area for this model (same filesystem as `dest`).
    staging: Path
    #: The manifest file.
    manifest: Path
    #: True when `dest` is a mount point: entries are moved in one by one at publish.
    in_place: bool = False
    #: The content store whose entries the model's files may be links to (`fetch/blobs.py`),
    #: on the same filesystem as `dest`; None: every file is the model's own.
    blobs: Path | None = None

    @classmethod
    def in_store(cls, root: str | os.PathLike[str], key: str) -> Layout:
        base = Path(root)
        return cls(dest=base / "models" / key, staging=base / "staging" / key,
                   manifest=base / "manifests" / f"{key}.json", blobs=base / "blobs")

    @classmethod
    def beside(cls, dest: str | os.PathLike[str]) -> Layout:
        path = Path(os.path.abspath(dest))
        hidden = path.parent / HIDDEN
        return cls(dest=path, staging=hidden / "staging" / path.name,
                   manifest=hidden / "manifests" / f"{path.name}.json")

    @classmethod
    def inside(cls, dest: str | os.PathLike[str]) -> Layout:
        path = Path(os.path.abspath(dest))
        return cls(dest=path, staging=path / HIDDEN / "staging",
                   manifest=path / HIDDEN / "manifest.json", in_place=True)

    @classmethod
    def for_path(cls, dest: str | os.PathLike[str]) -> Layout:
        """`inside` if `dest` is a mount point or sits on another filesystem than its parent,
        else `beside`."""
        path = Path(os.path.abspath(dest))
        if path.is_dir() and (os.path.ismount(path)
                              or path.stat().st_dev != path.parent.stat().st_dev):
            return cls.inside(path)
        return cls.beside(path)
