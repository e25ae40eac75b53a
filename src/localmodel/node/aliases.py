"""KServe ≤ 0.17's folder layout, `models/<modelName>`, served from `models/<storageKey>`.

KServe 0.18 named model folders by storage key (`sha256(uri)[:16]`); before, by the cache's
name: its agent mounted `SubPath: models/<modelName>` and its webhook pointed InferenceServices
at `pvc://<pvc>/models/<modelName>`. With such a controller, `--folder-layout model-name` makes
each wanted model's folder appear under its cache name too, as a relative symlink
`models/<modelName> -> <storageKey>`:

- no copy and no second download: one folder, two names (and two caches of one URI share it);
- the kubelet resolves symlinks inside a volume before it bind-mounts a subPath, and refuses a
  result outside the volume; a relative link to a sibling stays inside, so Pods see the folder;
- moving between layouts never downloads: switching on adds links, switching off removes them,
  and a real `models/<modelName>` folder left by KServe ≤ 0.17's agent is renamed to
  `models/<storageKey>` (same filesystem, atomic) and then adopted like any folder without a
  manifest (every file checked against the source, nothing fetched).

Only symlinks whose target is a bare storage key are ever removed (ours); anything else found
under a cache's name is reported and left alone, as the store does for key-shaped names.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from localmodel.api.keys import is_storage_key


class FolderLayout(str, Enum):
    #: `models/<storageKey>` only: KServe ≥ 0.18 and localmodel's own controller.
    STORAGE_KEY = "storage-key"
    #: Also `models/<modelName>`: KServe ≤ 0.17's controller and webhook.
    MODEL_NAME = "model-name"


@dataclass(frozen=True)
class AliasPlan:
    #: alias name → storage key it points at.
    links: dict[str, str] = field(default_factory=dict)
    #: Names that cannot be aliases, with why (logged once per pass that sees them).
    refused: tuple[str, ...] = ()


def _alias_problem(name: str) -> str | None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return "not a single folder name"
    if len(name.encode("utf-8")) > 255:
        return "longer than 255 bytes"
    if is_storage_key(name):
        return "shaped like a storage key (the name of another model's folder)"
    return None


def plan_aliases(layout: FolderLayout, models: Iterable[tuple[str, str]]) -> AliasPlan:
    """The links to keep, from (modelName, storage key) pairs in spec order (pure).

    KServe ≤ 0.17 named folders by modelName alone, so a cluster cache and a namespaced cache
    of one name cannot both have one: the first in spec order keeps it, as its folder did.
    """
    if layout is FolderLayout.STORAGE_KEY:
        return AliasPlan()
    links: dict[str, str] = {}
    refused: list[str] = []
    for name, key in models:
        problem = _alias_problem(name)
        if problem is not None:
            refused.append(f"models/{name}: modelName {problem}; served as models/{key} only")
            continue
        if links.setdefault(name, key) != key:
            refused.append(f"models/{name}: already the folder of models/{links[name]}; "
                           f"models/{key} is served under its storage key only")
    return AliasPlan(links=links, refused=tuple(refused))


def _ours(path: Path) -> str | None:
    """The storage key a symlink of ours points at, else None (never follows it)."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    return target if is_storage_key(target) else None


def sync_aliases(models_dir: Path, links: Mapping[str, str]) -> list[str]:
    """Make `models_dir`'s aliases equal to `links`; return what was done or left, for the log.

    Runs before the store looks at the folders, so a KServe ≤ 0.17 folder renamed here is seen
    at once as a folder without a manifest (adopted, not downloaded).
    """
    notes: list[str] = []
    try:
        names = os.listdir(models_dir)
    except FileNotFoundError:
        return notes
    for name in names:
        path = models_dir / name
        target = _ours(path)  # None for anything but a link of ours
        if target is not None and links.get(name) != target:
            os.unlink(path)
            notes.append(f"removed link models/{name} -> {target}")
    for name, key in links.items():
        path, folder = models_dir / name, models_dir / key
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            if _ours(path) != key:
                notes.append(f"models/{name} is a symlink localmodel did not make; left alone")
            continue
        if st is not None and stat.S_ISDIR(st.st_mode):
            if os.path.lexists(folder):
                notes.append(f"models/{name} is a folder and models/{key} exists too; left alone")
                continue
            os.rename(path, folder)  # KServe ≤ 0.17's copy becomes the key's, to be adopted
            notes.append(f"moved KServe's models/{name} to models/{key}")
        elif st is not None:
            notes.append(f"models/{name} is not a folder; left alone")
            continue
        if not os.path.isdir(folder) or os.path.islink(folder):
            continue  # linked once the model is there
        try:
            os.symlink(key, path)
        except OSError as error:
            if error.errno != errno.EEXIST:
                raise
        notes.append(f"linked models/{name} -> {key}")
    return notes
