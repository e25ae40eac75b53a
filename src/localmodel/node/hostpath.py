"""Where the agent's root is on the node, and whether a node group's volume points there.

KServe's most common setup mistake (kserve#4151): the LocalModelNodeGroup's PersistentVolume
(`spec.persistentVolumeSpec.local.path`) names another host directory than the agent
DaemonSet's hostPath. The agent fills one directory, the inference Pods mount the other and
find nothing. The agent cannot see the DaemonSet, but it can see its own mount:
/proc/self/mountinfo lists, for every mount, the path *within its source filesystem* that is
mounted (the 4th field, "root"). The kubelet mounts a hostPath with a bind mount, so for the
mount at the agent's `--root` that field is the host directory, e.g. `/models`.

Limits, so the check refuses only where the path is known:
- the path is relative to the filesystem the host directory lives on. It is the node's path
  only when that filesystem is the node's root filesystem. The agent knows it is when the
  kubelet's own files for the Pod (/etc/hosts, /dev/termination-log, bind-mounted from
  /var/lib/kubelet/pods/...) come from the same device with paths under /var/lib/kubelet/
  ("anchored"). Otherwise (the directory on another disk, an Azure VM's /mnt: hostPath
  /mnt/models shows as /models; a kubelet with another root directory; /var on its own disk)
  nothing is refused: the verdict is unknown unless the paths are equal;
- a whole filesystem mounted at the root (root field `/`: a disk mounted at /models on the
  node, an emptyDir on tmpfs, a test's plain directory) says nothing about the host path;
- the kubelet resolves symbolic links, and a directory that is itself a bind mount on the node
  shows as its source: a volume path through either looks different although it is the same
  directory. The message names both paths; setting the group's path to the one the agent
  shows is always right (it is the real directory).

`parse_mountinfo()` and `verdict()` are pure; `read_host_root()` reads the file. Tests point the
agent at a recorded mountinfo with the environment variable LOCALMODEL_MOUNTINFO (test-only;
the agent always reads /proc/self/mountinfo otherwise).
"""

from __future__ import annotations

import enum
import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmodel.errors import HostPathMismatchError

#: Where the kubelet keeps each Pod's /etc/hosts and termination log by default; a mount from
#: under it shows which device is the node's root filesystem.
KUBELET_ROOT = "/var/lib/kubelet/"

#: Test-only: a file to read instead of /proc/self/mountinfo.
MOUNTINFO_ENV = "LOCALMODEL_MOUNTINFO"
DEFAULT_MOUNTINFO = "/proc/self/mountinfo"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (proc(5)), the fields the check needs."""

    mount_id: int
    parent_id: int
    device: str
    #: The path within the source filesystem that is mounted here ("/" for all of it).
    root: str
    #: Where, relative to this process's root.
    mount_point: str
    fstype: str
    source: str


@dataclass(frozen=True)
class HostRoot:
    """Where the agent's root lives: `path` within the filesystem `source` (`fstype`), mounted
    at `mount_point` in the agent's view."""

    path: str
    mount_point: str
    fstype: str
    source: str
    #: True when that filesystem is shown to be the node's root filesystem, so `path` is the
    #: node's absolute path (see the module's limits).
    anchored: bool = False


class Verdict(str, enum.Enum):
    SAME = "Same"
    DIFFERENT = "Different"
    #: Not decidable from inside the container (see the module's limits).
    UNKNOWN = "Unknown"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line of a mountinfo file, in order (later mounts stack on earlier)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            mounts.append(Mount(
                mount_id=int(fields[0]), parent_id=int(fields[1]), device=fields[2],
                root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
                fstype=fields[separator + 1], source=_unescape(fields[separator + 2]),
            ))
        except (ValueError, IndexError):
            continue  # not a mountinfo line; the kernel's format has no other kind
    return mounts


def _is_within(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def host_root(mounts: list[Mount], root: str | os.PathLike[str]) -> HostRoot | None:
    """Where `root` (an absolute path in this process's view) lives: the path within its source
    filesystem, from the mount that holds it (the deepest mount point, the last one mounted
    there). None when the mount is a whole filesystem (root field `/`), so the host path is not
    visible from here."""
    target = posixpath.normpath(os.fspath(root))
    holding = [m for m in mounts if _is_within(target, m.mount_point)]
    if not holding:
        return None
    deepest = max(len(m.mount_point) for m in holding)
    mount = [m for m in holding if len(m.mount_point) == deepest][-1]
    if mount.root == "/":
        return None
    below = posixpath.relpath(target, mount.mount_point)
    path = mount.root if below == "." else posixpath.join(mount.root, below)
    anchored = any(m.device == mount.device and m.root.startswith(KUBELET_ROOT) for m in mounts)
    return HostRoot(path=posixpath.normpath(path), mount_point=mount.mount_point,
                    fstype=mount.fstype, source=mount.source, anchored=anchored)


def read_host_root(root: str | os.PathLike[str], environ: Mapping[str, str] = os.environ) -> HostRoot | None:
    """`host_root()` of this process's mountinfo; None when it cannot be read."""
    source = environ.get(MOUNTINFO_ENV) or DEFAULT_MOUNTINFO
    try:
        text = Path(source).read_text()
    except OSError:
        return None
    return host_root(parse_mountinfo(text), os.path.abspath(root))


def verdict(host: HostRoot | None, volume_path: str | None) -> Verdict:
    """Whether the node group's volume path is the agent's host directory."""
    if host is None or not volume_path or not volume_path.startswith("/"):
        return Verdict.UNKNOWN
    volume = posixpath.normpath(volume_path)
    if volume == host.path:
        return Verdict.SAME
    if not host.anchored:
        # A path within a filesystem mounted who knows where on the node: /mnt/models may be
        # seen as /models. Not provably different.
        return Verdict.UNKNOWN
    return Verdict.DIFFERENT


def group_volume_path(group: Mapping[str, Any] | None) -> str | None:
    """The host directory a LocalModelNodeGroup's PersistentVolume mounts: `local.path`, or
    `hostPath.path` for a hostPath volume; None when it has neither."""
    spec = ((group or {}).get("spec") or {}).get("persistentVolumeSpec") or {}
    for kind in ("local", "hostPath"):
        path = (spec.get(kind) or {}).get("path")
        if isinstance(path, str) and path:
            return path
    return None


def mismatch_message(group: str, volume_path: str, host: HostRoot) -> str:
    return (
        f"LocalModelNodeGroup {group} mounts {volume_path} on the node (persistentVolumeSpec), "
        f"but this agent's --root {host.mount_point} is the node's {host.path} (hostPath, "
        f"from /proc/self/mountinfo): Pods using the group's PVC would not find the model. "
        f"Downloads for this group are refused until both name the same directory: set the "
        f"group's local.path to {host.path} or the agent's hostPath to {volume_path}"
    )


def check_group_paths(host: HostRoot | None, group_paths: Mapping[str, str | None]) -> None:
    """Raises HostPathMismatchError naming the first group (by name) whose volume is provably
    another directory than the agent's root. The download is refused for a model wanted by
    such a group: its Pods would not see it, and a fix of either path lets the next attempt go."""
    for group in sorted(group_paths):
        volume_path = group_paths[group]
        if volume_path and host is not None and verdict(host, volume_path) is Verdict.DIFFERENT:
            raise HostPathMismatchError(mismatch_message(group, volume_path, host))
