"""Build what a local real node runs, once per version of its sources, like the control plane.

- kubelet, kube-scheduler, kube-proxy: main packages of hack/controlplane, the control plane's own
  Go module, so they are built from the same k8s.io/kubernetes version as the apiserver;
- containerd, ctr, containerd-shim-runc-v2, runc and the CNI plugins bridge, host-local,
  loopback and portmap: tools of the Go module hack/noderuntime (its go.mod pins the versions);
- pause: the sandbox process of every Pod, from hack/pause/pause.c (gcc -static), packed as the
  one-layer OCI image archive `pause-image.tar` (reference PAUSE_IMAGE) that every node's
  containerd imports, since no registry is reachable.

Everything lands in `<cache>/localmodel/nodes/<digest>/` (CNI plugins in its `cni/`), where the
digest covers the sources and the recipe; see localmodel.dev.build for the caching rules.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from localmodel.dev import build
from localmodel.dev.oci import ImageConfig, Layer, write_image
from localmodel.errors import ControlPlaneError

#: Main packages of hack/controlplane built for the nodes.
KUBE_COMMANDS: tuple[str, ...] = ("kubelet", "kube-scheduler", "kube-proxy")

#: Tools of hack/noderuntime built without cgo (import path by binary name).
RUNTIME_TOOLS: dict[str, str] = {
    "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
    "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
    "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
}
CNI_PLUGINS: dict[str, str] = {
    "bridge": "github.com/containernetworking/plugins/plugins/main/bridge",
    "host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
    "loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
    "portmap": "github.com/containernetworking/plugins/plugins/meta/portmap",
}
#: runc needs cgo (its nsenter is C that runs before the Go runtime starts).
RUNC = "github.com/opencontainers/runc"

#: containerd's optional snapshotters that need C libraries or kernel features we do not use;
#: overlayfs and native are what the nodes use.
RUNTIME_TAGS: tuple[str, ...] = ("no_btrfs", "no_devmapper", "no_zfs")

#: The sandbox image every node's containerd is told to use; imported, never pulled.
PAUSE_IMAGE = "localhost/localmodel-pause:1"

#: A fixed timestamp for the pause image, so its digest depends on the binary only.
_PAUSE_EPOCH = 1_700_000_000


@dataclass(frozen=True)
class NodePaths:
    """Where the built node binaries are."""

    bin_dir: Path

    @property
    def kubelet(self) -> Path:
        return self.bin_dir / "kubelet"

    @property
    def kube_scheduler(self) -> Path:
        return self.bin_dir / "kube-scheduler"

    @property
    def kube_proxy(self) -> Path:
        return self.bin_dir / "kube-proxy"

    @property
    def containerd(self) -> Path:
        return self.bin_dir / "containerd"

    @property
    def ctr(self) -> Path:
        return self.bin_dir / "ctr"

    @property
    def containerd_shim_runc_v2(self) -> Path:
        return self.bin_dir / "containerd-shim-runc-v2"

    @property
    def runc(self) -> Path:
        return self.bin_dir / "runc"

    @property
    def cni_bin_dir(self) -> Path:
        return self.bin_dir / "cni"

    @property
    def pause_image_archive(self) -> Path:
        return self.bin_dir / "pause-image.tar"


def default_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    return build.default_cache_root(environ).parent / "nodes"


def default_runtime_dir() -> Path:
    return build.default_source_dir().parent / "noderuntime"


def default_pause_source() -> Path:
    return build.default_source_dir().parent / "pause" / "pause.c"


def runc_tags() -> tuple[str, ...]:
    """`seccomp` when libseccomp's headers are installed (Debian: libseccomp-dev), so runc can
    apply the RuntimeDefault seccomp profile Pods may ask for; without them runc still builds."""
    return ("seccomp",) if Path("/usr/include/seccomp.h").exists() else ()


def node_digest(kube_dir: Path, runtime_dir: Path, pause_source: Path) -> str:
    digest = hashlib.sha256()
    recipe = [
        build.version_ldflags(kube_dir), *KUBE_COMMANDS, *RUNTIME_TOOLS.values(), *CNI_PLUGINS.values(),
        RUNC, *RUNTIME_TAGS, "runc-tags:", *runc_tags(), PAUSE_IMAGE, "recipe-1",
    ]
    digest.update(" ".join(recipe).encode() + b"\0")
    build.update_with_module(digest, kube_dir, KUBE_COMMANDS)
    for path in (runtime_dir / "go.mod", runtime_dir / "go.sum", pause_source):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def built_node_paths(cache_root: Path | None = None) -> NodePaths | None:
    """The node binaries for the current sources if they are already built, else None."""
    bin_dir = (cache_root or default_cache_root()) / node_digest(
        build.default_source_dir(), default_runtime_dir(), default_pause_source()
    )
    return NodePaths(bin_dir) if build.is_complete(bin_dir) else None


def ensure_node_built(
    cache_root: Path | None = None, *, log: Path | None = None, environ: Mapping[str, str] = os.environ
) -> NodePaths:
    """Return the node binaries for the current sources, building them first if needed (under a
    file lock, so parallel sessions build once)."""
    kube_dir = build.default_source_dir().resolve()
    runtime_dir = default_runtime_dir().resolve()
    pause_source = default_pause_source().resolve()
    for needed in (kube_dir / "go.mod", runtime_dir / "go.mod", pause_source):
        if not needed.is_file():
            raise ControlPlaneError(
                f"{needed} is missing: building the node binaries needs a source checkout of "
                "localmodel (an editable install)"
            )
    cache_root = cache_root or default_cache_root(environ)
    bin_dir = cache_root / node_digest(kube_dir, runtime_dir, pause_source)
    if build.is_complete(bin_dir):
        return NodePaths(bin_dir)
    go = build.find_go(environ)
    cache_root.mkdir(parents=True, exist_ok=True)
    with build.exclusive(cache_root / ".build.lock"):
        if not build.is_complete(bin_dir):
            with build.staged_directory(bin_dir) as staging:
                _build(go, kube_dir, runtime_dir, pause_source, staging, log=log, environ=environ)
    return NodePaths(bin_dir)


def _module_version(go_mod: Path, module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", go_mod.read_text(), re.MULTILINE)
    if match is None:
        raise ControlPlaneError(f"{go_mod} does not require {module}")
    return match.group(1)


def _build(
    go: Path, kube_dir: Path, runtime_dir: Path, pause_source: Path, out: Path,
    *, log: Path | None, environ: Mapping[str, str],
) -> None:
    build.go_build(
        go, kube_dir, [f"./cmd/{name}" for name in KUBE_COMMANDS], out,
        ldflags=f"-s -w {build.version_ldflags(kube_dir)}", log=log, environ=environ,
        what="kubelet, kube-scheduler and kube-proxy",
    )
    containerd_version = _module_version(runtime_dir / "go.mod", "github.com/containerd/containerd/v2")
    build.go_build(
        go, runtime_dir, list(RUNTIME_TOOLS.values()), out,
        ldflags=f"-s -w -X github.com/containerd/containerd/v2/version.Version={containerd_version}",
        tags=RUNTIME_TAGS, cgo=False, log=log, environ=environ, what="containerd",
    )
    (out / "cni").mkdir()
    build.go_build(
        go, runtime_dir, list(CNI_PLUGINS.values()), out / "cni",
        cgo=False, log=log, environ=environ, what="the CNI plugins",
    )
    runc_version = _module_version(runtime_dir / "go.mod", RUNC)
    build.go_build(
        go, runtime_dir, [RUNC], out,
        ldflags=f"-s -w -X main.version={runc_version.lstrip('v')}",
        tags=runc_tags(), cgo=True, log=log, environ=environ, what="runc",
    )
    _build_pause(pause_source, out, log=log, environ=environ)


def _build_pause(source: Path, out: Path, *, log: Path | None, environ: Mapping[str, str]) -> None:
    gcc = shutil.which("gcc", path=environ.get("PATH", ""))
    if gcc is None:
        raise ControlPlaneError("`gcc` was not found on PATH: the nodes' pause binary is C (apt-get install gcc)")
    layer_dir = out / "pause-layer"
    layer_dir.mkdir()
    build.run_logged(
        [gcc, "-Os", "-static", "-s", "-o", str(layer_dir / "pause"), str(source)],
        source.parent, environ, log, what="gcc of the pause binary",
    )
    write_image(
        out / "pause-image.tar",
        [Layer(layer_dir)],
        ImageConfig(entrypoint=["/pause"]),
        PAUSE_IMAGE,
        source_date_epoch=_PAUSE_EPOCH,
    )


def _main() -> int:
    """`python -m localmodel.dev.nodebuild`: build the node binaries, print where they are."""
    started = time.monotonic()
    paths = ensure_node_built()
    print(f"node binaries in {paths.bin_dir} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
