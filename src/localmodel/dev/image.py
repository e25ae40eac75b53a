"""The product image, built here from Debian packages: no base image is pulled, no engine runs.

    build_image(repo) -> WrittenImage      `localmodel dev image`, `make image`
    build_tool_image(dir, ToolImage) -> WrittenImage   the same root filesystem with another
                                           Python tool's venv (KSERVE_STORAGE_IMAGE: KServe's
                                           downloader, for bench/coldstart.py)

1. The root filesystem: Debian bookworm with python3 (3.11) and ca-certificates, made by
   mmdebstrap (variant `essential`: dpkg's Essential set and what the two packages need; no
   apt, no docs, man pages, locales or apt lists). It is cached in
   `~/.cache/localmodel/rootfs/<digest>/` under a digest of its recipe (suite, mirrors, packages,
   options, epoch), so it is built once (about a minute) and reused by every image build.
2. The venv /opt/localmodel: hack/install-venv.sh (what the Dockerfile runs) inside a chroot of
   that root filesystem, with the root filesystem's own /usr/bin/python3, so the interpreter
   path in the venv is valid in the image. The chroot is offline: the project's wheel and its
   dependencies at the versions of requirements.lock are collected on the host with pip first.
   The cached root filesystem is mounted read-only for the chroot (a private mount namespace),
   so the venv is the only thing written.
3. The image config of the Dockerfile's runtime stage (entrypoint `localmodel`, user 1000:1000,
   PATH, PYTHONDONTWRITEBYTECODE, PYTHONUNBUFFERED, HOME=/tmp), and two layers: the root
   filesystem and the venv, packed by `localmodel.dev.oci` into
   `.cache/image/localmodel-<version>.oci.tar` under the reference `localhost/localmodel:dev`.

Reproducible: SOURCE_DATE_EPOCH (default: the commit time of HEAD) clamps every mtime, fixes
the wheel's zip timestamps and makes pip compile hash-checked .pyc files, so the same commit
and the same cached root filesystem give the same image digest. A rebuilt root filesystem is the
same when the Debian mirror serves the same package versions.

Needs root (mmdebstrap's root mode, chroot, mount namespaces), mmdebstrap
(`apt-get install mmdebstrap`) and the Debian mirror; pip reaches PyPI unless its cache has the
wheels. The same root filesystem serves test Pods that read a model and print sha256s (python3).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import localmodel
from localmodel.dev.build import exclusive
from localmodel.dev.oci import ImageConfig, Layer, WrittenImage, write_image
from localmodel.errors import ImageBuildError

DEFAULT_REFERENCE = "localhost/localmodel:dev"

#: Where the venv is in the image; the Dockerfile copies it to the same place.
VENV_PATH = "opt/localmodel"

#: The Dockerfile's runtime stage, as an OCI config (tests/packaging/test_dockerfile.py checks
#: that they agree). PATH is Debian's default with the venv first, as `ENV PATH=...:$PATH`.
IMAGE_CONFIG = ImageConfig(
    entrypoint=("localmodel",),
    cmd=("--help",),
    env=(
        "PATH=/opt/localmodel/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "HOME=/tmp",
    ),
    user="1000:1000",
    working_dir="/tmp",
    labels={
        "org.opencontainers.image.title": "localmodel",
        "org.opencontainers.image.description":
            "Node-local model cache for Kubernetes (KServe LocalModelCache compatible)",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": localmodel.__version__,
    },
)


@dataclass(frozen=True)
class RootfsRecipe:
    """Everything that decides the root filesystem; its digest names the cache entry."""

    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    #: Beyond the Essential set: the interpreter of the venv, CA certificates for HTTPS
    #: sources that do not bring their own (certifi is in the venv too), and libstdc++, which
    #: the wheels' C extensions of google-crc32c and frozenlist link to: without it they fall
    #: back to pure Python with only a warning (GCS checksums many times slower). Docker's
    #: python:*-slim bases have it (apt needs it); the Essential set has no apt.
    packages: tuple[str, ...] = ("python3", "ca-certificates", "libstdc++6")
    #: mmdebstrap's SOURCE_DATE_EPOCH (2025-05-20, the snapshot the build machines' apt uses).
    #: Fixed, not the commit time: the root filesystem must not be rebuilt for every commit.
    epoch: int = 1_747_699_200
    #: Left out at unpack time (dpkg path-exclude): documentation but the copyright files
    #: (licences must ship), man and info pages, translations, lintian overrides.
    excluded_paths: tuple[str, ...] = (
        "/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
        "/usr/share/lintian/*", "/usr/share/bash-completion/*",
    )
    kept_paths: tuple[str, ...] = ("/usr/share/doc/*/copyright",)

    def sources(self) -> list[str]:
        return [
            f"deb {self.mirror} {self.suite} main",
            f"deb {self.mirror} {self.suite}-updates main",
            f"deb {self.security_mirror} {self.suite}-security main",
        ]

    def digest(self) -> str:
        document = {"recipe": self.__dict__, "removed": _REMOVED_AFTER_BUILD, "version": 2}
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


#: Removed from the finished tree (globs under it): what a container needs no copy of (the
#: runtime provides /dev, resolv.conf, hostname), apt's downloaded lists and caches, logs, the
#: info directory file install-info leaves behind.
_REMOVED_AFTER_BUILD = (
    "dev/*", "var/lib/apt/lists/*", "var/cache/apt/*", "var/cache/debconf/*-old", "var/log/*",
    "etc/resolv.conf", "etc/hostname", "usr/share/info/*",
)

_COMPLETE_MARKER = ".complete"


def default_cache_root(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CACHE_HOME/localmodel/rootfs`, or `~/.cache/localmodel/rootfs`."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "localmodel" / "rootfs"


def default_repo() -> Path:
    """The source checkout this package was installed from (editable installs)."""
    return Path(__file__).resolve().parents[3]


def default_output_dir(repo: Path) -> Path:
    return repo / ".cache" / "image"


def archive_name(version: str = localmodel.__version__) -> str:
    return f"localmodel-{version}.oci.tar"


def source_date_epoch(repo: Path, environ: Mapping[str, str] = os.environ) -> int:
    """SOURCE_DATE_EPOCH if set, else the commit time of HEAD (the reproducible-builds rule)."""
    if environ.get("SOURCE_DATE_EPOCH"):
        return int(environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%ct"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not done.stdout.strip():
        raise ImageBuildError(f"{repo} is not a git checkout with a commit: set SOURCE_DATE_EPOCH")
    return int(done.stdout.strip())


def ensure_rootfs(recipe: RootfsRecipe = RootfsRecipe(), cache_root: Path | None = None, *,
                  rebuild: bool = False, log: Path | None = None) -> Path:
    """The root filesystem for `recipe`, built with mmdebstrap unless cached. Returns its
    directory; `packages.txt` next to it lists the package versions it holds."""
    entry = (cache_root or default_cache_root()) / recipe.digest()
    rootfs = entry / "rootfs"
    if (entry / _COMPLETE_MARKER).exists() and not rebuild:
        return rootfs
    entry.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(entry.parent / ".build.lock"):
        if (entry / _COMPLETE_MARKER).exists() and not rebuild:
            return rootfs
        _build_rootfs(recipe, entry, log)
    return rootfs


def _build_rootfs(recipe: RootfsRecipe, entry: Path, log: Path | None) -> None:
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise ImageBuildError("mmdebstrap is not installed: apt-get install mmdebstrap")
    if os.geteuid() != 0:
        raise ImageBuildError("building the root filesystem needs root (mmdebstrap --mode=root)")
    # Built next to its place and renamed, so a killed build never looks finished.
    staging = entry.with_name(f"{entry.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [
        mmdebstrap, "--variant=essential", "--mode=root", "--format=directory",
        f"--include={','.join(recipe.packages)}",
        # bookworm's merged /usr, set up by mmdebstrap itself: without this hook the usrmerge
        # package is installed, and with it perl (50 MB).
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt=path-exclude={path}" for path in recipe.excluded_paths),
        *(f"--dpkgopt=path-include={path}" for path in recipe.kept_paths),
        recipe.suite, str(staging / "rootfs"), *recipe.sources(),
    ]
    environment = {**os.environ, "SOURCE_DATE_EPOCH": str(recipe.epoch)}
    started = int(time.time()) - 1
    _run(command, "mmdebstrap", log, env=environment, timeout=1800)
    tree = staging / "rootfs"
    for pattern in _REMOVED_AFTER_BUILD:
        for path in tree.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # The mount point of the venv while it is built, and its place in the image.
    (tree / VENV_PATH).mkdir(mode=0o755)
    _settle_mtimes(tree, since=started, epoch=recipe.epoch)
    packages = subprocess.run(
        ["chroot", str(staging / "rootfs"), "dpkg-query", "-W", "-f", "${Package} ${Version}\\n"],
        capture_output=True, text=True, check=True).stdout
    (staging / "packages.txt").write_text("".join(sorted(packages.splitlines(keepends=True))))
    (staging / _COMPLETE_MARKER).write_text(json.dumps(recipe.__dict__, sort_keys=True) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    staging.rename(entry)


def _settle_mtimes(tree: Path, since: int, epoch: int) -> None:
    """Everything the build wrote (maintainer scripts' output, compiled bytecode, dpkg's
    database, directories) gets the recipe's epoch instead of the time it ran, so two builds of
    the same packages give the same tree whenever they ran. Files dpkg unpacked keep the
    mtime their package gives them (older than the build), which is also what the compiled
    bytecode of Python modules records."""
    for directory, folders, files in os.walk(tree):
        for name in [*folders, *files, ""]:
            path = os.path.join(directory, name) if name else directory
            if os.lstat(path).st_mtime >= since:
                os.utime(path, (epoch, epoch), follow_symlinks=False)


def collect_wheels(repo: Path, wheels: Path, epoch: int, log: Path | None = None) -> Path:
    """On the host: the project's wheel, its runtime dependencies at the locked versions, and
    pip's own wheel (the root filesystem has no pip; pip runs from its wheel there). Returns
    pip's wheel."""
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    environment = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    # Built from a copy of what the Dockerfile copies (.dockerignore): setuptools' build/ folder
    # in the checkout may hold modules deleted since, and they would end up in the wheel.
    source = wheels.parent / "source"
    for name in ("pyproject.toml", "README.md", "requirements.lock"):
        source.mkdir(exist_ok=True)
        shutil.copy2(repo / name, source / name)
    shutil.copytree(repo / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    _run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
         "pip wheel (localmodel)", log, env=environment)
    [project_wheel] = wheels.glob("localmodel-*.whl")
    _run([*pip, "wheel", "--quiet", "--wheel-dir", str(wheels), "--constraint",
          str(repo / "requirements.lock"), str(project_wheel)],
         "pip wheel (dependencies)", log, env=environment)
    pip_version = subprocess.run([*pip, "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    pip_dir = wheels.parent / "pip"
    _run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(pip_dir),
          f"pip=={pip_version}"], "pip download (pip)", log, env=environment)
    [pip_wheel] = pip_dir.glob("pip-*.whl")
    return pip_wheel


# Runs as root in a private mount namespace: the cached root filesystem read-only, a tmpfs on
# its /tmp with the build inputs, the (empty) venv folder on its place in the image (TARGET,
# /opt/localmodel for the product); then the install script in a chroot with nothing of the
# host's environment.
_CHROOT_SETUP = r"""
set -eu
rootfs=$1 venv=$2 inputs=$3 target=$4
shift 4
mount --bind "$rootfs" "$rootfs"
mount -o remount,bind,ro "$rootfs"
mount -t tmpfs -o mode=1777 tmpfs "$rootfs/tmp"
mount -t proc proc "$rootfs/proc"
mount -t tmpfs -o mode=755 tmpfs "$rootfs/dev"
for device in null zero random urandom; do
  touch "$rootfs/dev/$device"
  mount --bind "/dev/$device" "$rootfs/dev/$device"
done
mkdir "$rootfs/tmp/build"
mount --bind "$inputs" "$rootfs/tmp/build"
mount -o remount,bind,ro "$rootfs/tmp/build"
if [ "$target" != /opt/localmodel ]; then
  # Another venv's place: /opt of the read-only root filesystem becomes a scratch tmpfs that
  # holds only its mount point (the venv's path is baked into its scripts and pyvenv.cfg).
  mount -t tmpfs -o mode=755 tmpfs "$rootfs/opt"
  mkdir -p "$rootfs$target"
fi
mount --bind "$venv" "$rootfs$target"
exec chroot "$rootfs" /usr/bin/env -i "$@"
"""


def build_venv(rootfs: Path, repo: Path, venv: Path, epoch: int, log: Path | None = None) -> None:
    """hack/install-venv.sh inside a chroot of `rootfs`, installing into the empty folder
    `venv` (which becomes /opt/localmodel of the image), offline from wheels built here."""
    with tempfile.TemporaryDirectory(prefix="localmodel-image-inputs-", dir=venv.parent) as scratch:
        inputs = Path(scratch)
        pip_wheel = collect_wheels(repo, inputs / "wheels", epoch, log)
        (inputs / "hack").mkdir()
        shutil.copy2(repo / "hack" / "install-venv.sh", inputs / "hack" / "install-venv.sh")
        shutil.copy2(repo / "requirements.lock", inputs / "requirements.lock")
        inputs.chmod(0o755)
        environment = [
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
            f"SOURCE_DATE_EPOCH={epoch}",
            # pip from its wheel, offline, from the collected wheels (hack/install-venv.sh).
            f"PYTHONPATH=/tmp/build/pip/{pip_wheel.name}", "WHEELS=/tmp/build/wheels",
            "PYTHON=/usr/bin/python3", "PIP_NO_CACHE_DIR=1", "PIP_DISABLE_PIP_VERSION_CHECK=1",
            "PIP_ROOT_USER_ACTION=ignore",
        ]
        _run_in_chroot(rootfs, venv, inputs, "/" + VENV_PATH, environment,
                       ["/bin/bash", "/tmp/build/hack/install-venv.sh", "/" + VENV_PATH],
                       "hack/install-venv.sh in the chroot", log)


def _run_in_chroot(rootfs: Path, venv: Path, inputs: Path, target: str, environment: Sequence[str],
                   command: Sequence[str], step: str, log: Path | None) -> None:
    """`command` in a chroot of the read-only `rootfs`, `inputs` at /tmp/build (read-only) and
    the empty folder `venv` mounted at `target`, the only place it can write."""
    argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            _CHROOT_SETUP, "sh", str(rootfs), str(venv), str(inputs), target,
            *environment, *command]
    _run(argv, step, log, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


def build_image(
    repo: Path | None = None,
    output_dir: Path | None = None,
    *,
    reference: str = DEFAULT_REFERENCE,
    recipe: RootfsRecipe = RootfsRecipe(),
    cache_root: Path | None = None,
    rebuild_rootfs: bool = False,
    gzip_layers: bool = False,
    epoch: int | None = None,
    log: Path | None = None,
) -> WrittenImage:
    """Builds `<output_dir>/localmodel-<version>.oci.tar` (default `.cache/image/` of the
    checkout) for `reference`. Import it with `localmodel.dev.oci.import_image()`."""
    repo = (repo or default_repo()).resolve()
    output_dir = (output_dir or default_output_dir(repo)).resolve()
    epoch = source_date_epoch(repo) if epoch is None else epoch
    rootfs = ensure_rootfs(recipe, cache_root, rebuild=rebuild_rootfs, log=log)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".venv-build-", dir=output_dir) as scratch:
        venv = Path(scratch) / "localmodel"
        venv.mkdir()
        venv.chmod(0o755)
        build_venv(rootfs, repo, venv, epoch, log)
        return write_image(
            output_dir / archive_name(), [Layer(rootfs), Layer(venv, VENV_PATH)], IMAGE_CONFIG,
            reference, epoch, gzip_layers=gzip_layers,
        )


@dataclass(frozen=True)
class ToolImage:
    """A variant of the product image for another Python tool: the same cached root filesystem
    and the same offline venv step, with `requirements` (pinned, from PyPI wheels) in the venv
    `/opt/<name>` instead of localmodel. Benchmarks and tests use it to run a peer (KServe's
    downloader, `kserve-storage`) in a Pod built exactly like the product's."""

    name: str
    requirements: tuple[str, ...]
    reference: str

    @property
    def venv_path(self) -> str:
        return f"/opt/{self.name}"

    def config(self) -> ImageConfig:
        """The product image's config with this venv on PATH and python as the entrypoint."""
        path = f"PATH={self.venv_path}/bin:" + IMAGE_CONFIG.env[0].split(":", 1)[1]
        return ImageConfig(
            entrypoint=(f"{self.venv_path}/bin/python",), cmd=("--version",),
            env=(path, *IMAGE_CONFIG.env[1:]), user=IMAGE_CONFIG.user,
            working_dir=IMAGE_CONFIG.working_dir,
            labels={"org.opencontainers.image.title": self.name,
                    "org.opencontainers.image.description":
                        f"{', '.join(self.requirements)} on localmodel's root filesystem"},
        )


#: KServe's storage-initializer downloader, at the version bench/download.py measures.
KSERVE_STORAGE_IMAGE = ToolImage("kserve-storage", ("kserve-storage==0.21.0",),
                                 "localhost/kserve-storage:0.21.0")

# In the chroot: a venv without pip at TARGET, then pip (from its wheel) installs the
# requirements into it offline, from the wheels collected on the host.
_TOOL_VENV_SCRIPT = r"""
set -eu
target=$1
shift
/usr/bin/python3 -m venv --without-pip "$target"
/usr/bin/python3 -m pip --python "$target/bin/python" install --quiet --no-warn-script-location \
  --no-index --find-links /tmp/build/wheels "$@"
"$target/bin/python" -c 'import sys; print(sys.prefix)'
"""


def collect_tool_wheels(tool: ToolImage, wheels: Path, python_version: str,
                        log: Path | None = None) -> Path:
    """On the host: binary wheels of `tool.requirements` and their dependencies for the root
    filesystem's Python (`python_version`, e.g. "3.11") on x86_64/aarch64 glibc, and pip's own
    wheel. Returns pip's wheel."""
    machine = os.uname().machine
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)]
    platforms += [f"manylinux2014_{machine}", f"linux_{machine}"]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "download", "--quiet", "--only-binary=:all:", "--python-version", python_version,
          *(f"--platform={name}" for name in platforms), "--dest", str(wheels),
          *tool.requirements], f"pip download ({', '.join(tool.requirements)})", log, env=os.environ)
    pip_version = subprocess.run([*pip, "--version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    pip_dir = wheels.parent / "pip"
    _run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(pip_dir),
          f"pip=={pip_version}"], "pip download (pip)", log, env=os.environ)
    [pip_wheel] = pip_dir.glob("pip-*.whl")
    return pip_wheel


def rootfs_python_version(rootfs: Path) -> str:
    """"3.11" for the root filesystem's /usr/bin/python3 (a symlink to python3.X)."""
    target = os.readlink(rootfs / "usr" / "bin" / "python3")
    return target.removeprefix("python")


def build_tool_image(
    output_dir: Path,
    tool: ToolImage = KSERVE_STORAGE_IMAGE,
    *,
    recipe: RootfsRecipe = RootfsRecipe(),
    cache_root: Path | None = None,
    epoch: int | None = None,
    log: Path | None = None,
) -> WrittenImage:
    """`<output_dir>/<name>.oci.tar`: the product's root filesystem layer (the same blob as the
    product image's built from the same commit) plus a venv layer with `tool.requirements`. Needs what build_image needs
    (root, a cached or buildable root filesystem) and PyPI or pip's cache for the wheels."""
    rootfs = ensure_rootfs(recipe, cache_root, log=log)
    # The product's SOURCE_DATE_EPOCH, so the root filesystem layer is the product image's own
    # blob, byte for byte (mtimes clamp to it), and containerd stores it once.
    epoch = source_date_epoch(default_repo()) if epoch is None else epoch
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    archive = output_dir / f"{tool.name}.oci.tar"
    with tempfile.TemporaryDirectory(prefix=f".{tool.name}-build-", dir=output_dir) as scratch:
        inputs = Path(scratch) / "inputs"
        pip_wheel = collect_tool_wheels(tool, inputs / "wheels", rootfs_python_version(rootfs), log)
        inputs.chmod(0o755)
        venv = Path(scratch) / "venv"
        venv.mkdir(mode=0o755)
        environment = [
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp", "LANG=C.UTF-8",
            f"SOURCE_DATE_EPOCH={epoch}", f"PYTHONPATH=/tmp/build/pip/{pip_wheel.name}",
            "PIP_NO_CACHE_DIR=1", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore",
        ]
        _run_in_chroot(rootfs, venv, inputs, tool.venv_path, environment,
                       ["/bin/sh", "-c", _TOOL_VENV_SCRIPT, "sh", tool.venv_path, *tool.requirements],
                       f"venv of {tool.name} in the chroot", log)
        return write_image(archive, [Layer(rootfs), Layer(venv, tool.venv_path.lstrip("/"))],
                           tool.config(), tool.reference, epoch)


def _run(command: Sequence[str], step: str, log: Path | None, *, env: Mapping[str, str],
         timeout: float = 900) -> None:
    started = time.monotonic()
    out = open(log, "ab") if log else None
    try:
        done = subprocess.run(list(command), env=dict(env), stdout=out or subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    finally:
        if out:
            out.close()
    if done.returncode != 0:
        detail = f"; see {log}" if log else ":\n" + (done.stdout or b"").decode(errors="replace")[-4000:]
        raise ImageBuildError(f"{step} failed (exit {done.returncode}) after "
                              f"{time.monotonic() - started:.0f}s{detail}")
