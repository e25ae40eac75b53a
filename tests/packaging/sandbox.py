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


def run_as_pod(argv: Sequence[str], *, path: Sequence[Path], env: Mapping[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        raise PermissionError("the pod-like sandbox needs root to make a mount namespace")
    environment = {"PATH": ":".join([*map(str, path), "/usr/bin", "/bin"]), "HOME": "/nonexistent",
                   **(env or {})}
    command = [
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _SETUP, "sh",
        "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--",
        "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd="/", check=False)
