"""Run a command the way the Pod runs the image: as UID/GID 1000 with no capabilities and no
privilege escalation, on a read-only root filesystem with a fresh tmpfs on /tmp, and an empty
environment. Needs root (to make the mount namespace), which the tests have.

The read-only root is real: a private mount namespace (`unshare --mount`) in which `/` is
remounted read-only, so nothing outside the new /tmp is writable, whoever owns it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

UID = GID = 1000

# Runs as root inside the new mount namespace, before dropping to UID 1000.
_SETUP = 'mount -o remount,ro,bind / && mount -t tmpfs -o size=16m,mode=1777 tmpfs /tmp && exec "$@"'


# The same inside an image's unpacked root filesystem ($1): it is made read-only, gets a fresh
# tmpfs on /tmp, the few devices a process opens, /proc; then chroot, and the image's own
# setpriv drops to UID 1000 (the host's could not: chroot needs a capability it has dropped).
_SETUP_CHROOT = (
    'root=$1; shift; mount --bind "$root" "$root" && mount -o remount,ro,bind "$root" && '
    'mount -t tmpfs -o size=16m,mode=1777 tmpfs "$root/tmp" && '
    'mount -t tmpfs -o mode=755 tmpfs "$root/dev" && '
    'for device in null zero random urandom; do touch "$root/dev/$device" && '
    'mount --bind "/dev/$device" "$root/dev/$device"; done && '
    'mount -t proc proc "$root/proc" && exec chroot "$root" "$@"'
)


# The same, for a long-running process that keeps state in folders of its own: each folder in
# $LOCALMODEL_WRITABLE is bind-mounted onto itself first (a mount of its own, so it stays
# writable), then / and every other writable mount a user could write to is made read-only.
_SETUP_WRITABLE = (
    'for dir in $LOCALMODEL_WRITABLE; do mount --bind "$dir" "$dir"; done && '
    'mount -o remount,ro,bind / && '
    'for other in /dev/shm /run /run/lock /tmp /var/tmp; do '
    'if mountpoint -q "$other"; then mount -o remount,ro,bind "$other"; fi; done && exec "$@"'
)


def pod_command(argv: Sequence[str], *, path: Sequence[Path], writable: Sequence[Path],
                env: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """(command, environment) that runs `argv` as UID/GID 1000 without capabilities, with only
    the `writable` folders writable and the rest of the filesystem read-only."""
    if os.geteuid() != 0:
        raise PermissionError("the pod-like sandbox needs root to make a mount namespace")
    environment = {"PATH": ":".join([*map(str, path), "/usr/bin", "/bin"]), "HOME": "/nonexistent",
                   **(env or {})}
    command = [
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _SETUP_WRITABLE, "sh",
        "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--",
        "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv,
    ]
    return command, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                     "LOCALMODEL_WRITABLE": " ".join(str(folder) for folder in writable)}


def run_as_pod(argv: Sequence[str], *, path: Sequence[Path], env: Mapping[str, str] | None = None,
               timeout: float = 60, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `argv` on this machine's root filesystem, or with `root` in the image's root
    filesystem unpacked there (`path` is then as the image sees it)."""
    if os.geteuid() != 0:
        raise PermissionError("the pod-like sandbox needs root to make a mount namespace")
    environment = {"PATH": ":".join([*map(str, path), "/usr/bin", "/bin"]), "HOME": "/nonexistent",
                   **(env or {})}
    setup = [_SETUP, "sh"] if root is None else [_SETUP_CHROOT, "sh", str(root)]
    command = [
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", *setup,
        "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--",
        "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", check=False)
