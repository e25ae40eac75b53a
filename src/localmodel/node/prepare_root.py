"""Hand the models directory to the agent's user: `localmodel prepare-root`, the agent Pod's
init container.

On a fresh node the kubelet creates the DirectoryOrCreate hostPath as root, mode 0755, and
fsGroup does not apply to hostPath volumes, so an agent running as UID 1000 without capabilities
cannot write it (KServe tells its users to chown the folder by hand). The init container runs
this as UID 0 with the single capability CAP_CHOWN: it changes the owner of the root directory
and of the agent's own folders directly under it (models/, manifests/, staging/, blobs/) when they exist
and belong to someone else, and nothing more:

- never recursive: model folders and files keep their owners (a folder KServe's Jobs wrote is
  adopted as it is, see docs/installation.md);
- never through a symbolic link, and only directories: every name is opened with
  O_NOFOLLOW | O_DIRECTORY relative to the already opened root, and the owner is changed on that
  open descriptor, so a link or a file planted under one of those names (by anyone who could
  write the directory, the agent's user included) is refused rather than followed, and there is
  no window between checking and changing;
- nothing is created (the agent makes missing folders itself once it owns the root), no mode
  is changed;
- idempotent: owners already right are left alone, so a restart changes nothing.

Opening a folder needs search permission on the root for UID 0 without CAP_DAC_OVERRIDE; the
kubelet's 0755 gives it. A root made private to another user (0700) is reported, not forced.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: The agent's own folders under the root (fetch/layout.py's store layout).
AGENT_FOLDERS: tuple[str, ...] = ("models", "manifests", "staging", "blobs")

_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeRootError(Exception):
    """A name under the root is not a plain directory (a symlink or a file), or cannot be
    opened: it is left alone, and the agent must not start on it."""


@dataclass(frozen=True)
class OwnerChange:
    path: str
    uid_before: int
    gid_before: int

    def describe(self, uid: int, gid: int) -> str:
        return f"{self.path}: owner {self.uid_before}:{self.gid_before} -> {uid}:{gid}"


def prepare_root(root: Path, uid: int, gid: int) -> list[OwnerChange]:
    """Gives `root` and its existing agent folders to uid:gid; returns what changed."""
    changes: list[OwnerChange] = []
    try:
        root_fd = os.open(root, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.EACCES:
            raise UnsafeRootError(_private(root)) from exc
        raise UnsafeRootError(f"{root}: cannot open as a directory without following links: "
                              f"{exc.strerror}") from exc
    try:
        # The folders first: while the root still belongs to root (a fresh node), UID 0 may
        # search it whatever its mode.
        for name in AGENT_FOLDERS:
            try:
                folder_fd = os.open(name, _OPEN_FLAGS, dir_fd=root_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UnsafeRootError(_refusal(root / name, root_fd, exc)) from exc
            try:
                change = _give(folder_fd, str(root / name), uid, gid)
            finally:
                os.close(folder_fd)
            if change:
                changes.append(change)
        change = _give(root_fd, str(root), uid, gid)
        if change:
            changes.append(change)
    finally:
        os.close(root_fd)
    return changes


def _give(fd: int, path: str, uid: int, gid: int) -> OwnerChange | None:
    status = os.fstat(fd)
    if (status.st_uid, status.st_gid) == (uid, gid):
        return None
    os.fchown(fd, uid, gid)
    return OwnerChange(path, status.st_uid, status.st_gid)


def _refusal(path: Path, root_fd: int, exc: OSError) -> str:
    # Only for the message: the refusal itself came from the kernel (O_NOFOLLOW|O_DIRECTORY
    # fails with ENOTDIR or ELOOP on a link).
    try:
        is_link = stat.S_ISLNK(os.lstat(path.name, dir_fd=root_fd).st_mode)
    except OSError:
        is_link = False
    if exc.errno == errno.EACCES:
        return _private(path.parent)
    if is_link:
        what = "is a symbolic link"
    elif exc.errno in (errno.ENOTDIR, errno.ELOOP):
        what = "is not a directory"
    else:
        what = f"cannot be opened ({exc.strerror})"
    return (f"{path} {what}: left alone. The agent's folders must be plain directories; "
            f"remove or rename it on the node and restart the Pod")


def _private(root: Path) -> str:
    return (f"{root}: permission denied. It belongs to another user and its mode keeps others "
            f"out, and UID 0 with CAP_CHOWN alone may not read or search it. On the node, make it "
            f"readable and searchable (chmod o+rx), or give it to the agent's user yourself")
