"""Build the control-plane binaries (etcd, kube-apiserver, kubectl, kube-controller-manager)
from the project's Go module in hack/controlplane, once per version of its sources.

Binaries land in `<cache>/localmodel/controlplane/<digest>/`, where the digest covers go.mod,
go.sum and every *.go file of the module. Changing any of them gives a new directory, so a stale
binary is never used and switching branches back and forth costs nothing. GOCACHE and GOMODCACHE
stay where Go puts them, so a rebuild after a small change is incremental.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localmodel.errors import ControlPlaneError, GoToolchainMissingError

#: The Go module's main packages, by the binary name each one builds.
COMMANDS: tuple[str, ...] = ("etcd", "kube-apiserver", "kubectl", "kube-controller-manager")

#: No symbol tables: about a third smaller, nothing lost for tests.
_LDFLAGS_BASE = "-s -w"

#: Marker written last into a finished build directory; a directory without it is incomplete.
_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Paths:
    """Where the built binaries are."""

    bin_dir: Path

    @property
    def etcd(self) -> Path:
        return self.bin_dir / "etcd"

    @property
    def kube_apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def kube_controller_manager(self) -> Path:
        return self.bin_dir / "kube-controller-manager"


def default_source_dir() -> Path:
    """The Go module in the repository this package was installed from (editable installs)."""
    return Path(__file__).resolve().parents[3] / "hack" / "controlplane"


def default_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CACHE_HOME/localmodel/controlplane`, or `~/.cache/...` as XDG says by default."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "localmodel" / "controlplane"


def source_digest(source_dir: Path) -> str:
    """A digest of everything that decides the binaries: go.mod, go.sum, all *.go files and the
    build flags."""
    digest = hashlib.sha256()
    # The recipe too: a change to the flags or the list of commands must not reuse old binaries.
    digest.update(" ".join([_LDFLAGS_BASE, version_ldflags(source_dir), *COMMANDS]).encode() + b"\0")
    update_with_module(digest, source_dir, COMMANDS)
    return digest.hexdigest()[:16]


def update_with_module(digest: Any, source_dir: Path, commands: Sequence[str]) -> None:
    """Feed a Go module's go.mod, go.sum and the *.go files that `commands` (main packages under
    cmd/) can use into `digest`: those of cmd/<command>/ and every *.go outside cmd/. Main packages
    of other commands are left out, so the node binaries (kubelet, ...) living in the control
    plane's module do not invalidate the control plane's build, nor the reverse."""
    files = [source_dir / "go.mod", source_dir / "go.sum"]
    for path in sorted(source_dir.rglob("*.go")):
        parts = path.relative_to(source_dir).parts
        if "bin" in parts:
            continue
        if parts[0] == "cmd" and len(parts) > 2 and parts[1] not in commands:
            continue
        files.append(path)
    for path in files:
        # The path is hashed too, so moving a file between main packages changes the digest.
        digest.update(str(path.relative_to(source_dir)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")


def find_go(environ: Mapping[str, str] = os.environ) -> Path:
    """The `go` binary on the PATH of `environ`."""
    found = shutil.which("go", path=environ.get("PATH", ""))
    if found is None:
        raise GoToolchainMissingError(
            "`go` was not found on PATH: the local control plane is built from Go modules "
            "(hack/controlplane). Install Go >= 1.26 (https://go.dev/dl/) and retry."
        )
    return Path(found)


def built_paths(source_dir: Path | None = None, cache_root: Path | None = None) -> Paths | None:
    """The binaries for the current sources if they are already built, else None."""
    source_dir = source_dir or default_source_dir()
    bin_dir = (cache_root or default_cache_root()) / source_digest(source_dir)
    return Paths(bin_dir) if (bin_dir / _COMPLETE_MARKER).exists() else None


def ensure_built(
    source_dir: Path | None = None,
    cache_root: Path | None = None,
    *,
    log: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Paths:
    """Return the binaries for the current Go sources, building them first if needed.

    Concurrent callers (parallel test sessions) take a file lock, so only one builds and the
    others wait and reuse its result. Build output goes to `log` (stderr when None).
    """
    source_dir = (source_dir or default_source_dir()).resolve()
    if not (source_dir / "go.mod").is_file():
        raise ControlPlaneError(
            f"no Go module at {source_dir}: building the control plane needs a source checkout "
            "of localmodel (an editable install) with hack/controlplane in it"
        )
    cache_root = cache_root or default_cache_root(environ)
    bin_dir = cache_root / source_digest(source_dir)
    if (bin_dir / _COMPLETE_MARKER).exists():
        return Paths(bin_dir)
    go = find_go(environ)
    cache_root.mkdir(parents=True, exist_ok=True)
    with exclusive(cache_root / ".build.lock"):
        if not (bin_dir / _COMPLETE_MARKER).exists():
            _build(go, source_dir, bin_dir, log=log, environ=environ)
    return Paths(bin_dir)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def kubernetes_version(source_dir: Path) -> str:
    """The k8s.io/kubernetes version the Go module requires, e.g. `v1.37.2`."""
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", (source_dir / "go.mod").read_text(), re.MULTILINE)
    if match is None:
        raise ControlPlaneError(f"{source_dir / 'go.mod'} does not require k8s.io/kubernetes")
    return match.group(1)


def version_ldflags(source_dir: Path) -> str:
    # Kubernetes' own build stamps its version with -X; without it the apiserver and kubectl
    # report v0.0.0-master, and clients that check the server version misbehave.
    version = kubernetes_version(source_dir)
    major, minor = version.lstrip("v").split(".")[:2]
    package = "k8s.io/component-base/version"
    return " ".join(
        f"-X {package}.{name}={value}"
        for name, value in (
            ("gitVersion", version), ("gitMajor", major), ("gitMinor", minor), ("gitTreeState", "clean"),
        )
    )


def _build(go: Path, source_dir: Path, bin_dir: Path, *, log: Path | None, environ: Mapping[str, str]) -> None:
    with staged_directory(bin_dir) as staging:
        go_build(
            go, source_dir, [f"./cmd/{name}" for name in COMMANDS], staging,
            ldflags=f"{_LDFLAGS_BASE} {version_ldflags(source_dir)}", log=log, environ=environ,
            what="the control plane",
        )


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """A fresh directory next to `final` to build into; renamed to `final`, with the completion
    marker, when the block ends without an error, and removed otherwise. A killed build therefore
    never looks finished."""
    staging = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (staging / _COMPLETE_MARKER).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)


def is_complete(bin_dir: Path) -> bool:
    """Whether `bin_dir` is a finished build (see `staged_directory`)."""
    return (bin_dir / _COMPLETE_MARKER).exists()


def go_build(
    go: Path,
    module_dir: Path,
    packages: Sequence[str],
    out_dir: Path,
    *,
    ldflags: str = _LDFLAGS_BASE,
    tags: Sequence[str] = (),
    cgo: bool | None = None,
    log: Path | None,
    environ: Mapping[str, str],
    what: str,
) -> None:
    """`go build` of `packages` (paths relative to `module_dir` or import paths of its
    dependencies) into `out_dir`. `cgo` None keeps the environment's CGO_ENABLED."""
    command = [str(go), "build", f"-ldflags={ldflags}"]
    if tags:
        command.append(f"-tags={','.join(tags)}")
    command += ["-o", str(out_dir) + os.sep, *packages]
    env = dict(environ)
    if cgo is not None:
        env["CGO_ENABLED"] = "1" if cgo else "0"
    run_logged(command, module_dir, env, log, what=f"`go build` of {what}")


def run_logged(command: Sequence[str], cwd: Path, env: Mapping[str, str], log: Path | None, *, what: str) -> None:
    """Run a build command with its output in `log` (stderr when None); raise on failure."""
    out = open(log, "ab") if log else None
    try:
        result = subprocess.run(
            list(command), cwd=cwd, env=dict(env), stdout=out or sys.stderr, stderr=subprocess.STDOUT
        )
    finally:
        if out:
            out.close()
    if result.returncode != 0:
        where = f"; see {log}" if log else ""
        raise ControlPlaneError(f"{what} failed (exit {result.returncode}){where}")
