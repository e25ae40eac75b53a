"""pytest plugin: the container image's Python install, without Docker.

Fixture `image_venv` (session): hack/install-venv.sh (the Dockerfile's builder step) builds the
wheel and installs it with the locked dependencies into a fresh venv under /var/tmp, readable by
UID 1000 as /opt/localmodel is in the image. Its interpreter is this Python or the system's of
the same version, whichever UID 1000 may run (pyenv installs under /root are private).
Used by tests/packaging (the image's contents) and tests/faults (the agent as UID 1000).

Fixture `product_image` (session): the image itself, built from Debian packages by
`localmodel dev image` (localmodel.dev.image; mmdebstrap, root) into an OCI archive under
/var/tmp; `image_rootfs`: its layers unpacked in order, the root filesystem a container would get.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.dev.image import build_image
from localmodel.dev.oci import WrittenImage

REPO = Path(__file__).resolve().parents[1]


def _usable_by_everyone(path: Path) -> bool:
    real = path.resolve()
    return real.stat().st_mode & 0o005 == 0o005 and all(
        parent.stat().st_mode & 0o001 for parent in real.parents)


def interpreter_for_uid_1000() -> Path:
    """This Python, or the system's of the same version, if UID 1000 can run it: the venv links
    to its interpreter as /opt/localmodel does to /usr/local/bin/python3 in the image."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path(sys._base_executable), Path("/usr/bin") / minor, Path("/usr/local/bin") / minor):
        if candidate.exists() and _usable_by_everyone(candidate):
            return candidate
    pytest.fail(f"no {minor} that UID 1000 can run (this one is under a private directory); "
                f"install Debian's python3 or run the tests with a system-wide Python")


@pytest.fixture(scope="session")
def image_venv() -> Iterator[Path]:
    # Not under /tmp (a fresh tmpfs hides it in the sandboxes) and readable by UID 1000.
    # Created anew every session: a clean install is the point.
    parent = Path(tempfile.mkdtemp(prefix="localmodel-image-", dir="/var/tmp"))
    parent.chmod(0o755)
    dest = parent / "opt" / "localmodel"
    done = subprocess.run(
        ["bash", str(REPO / "hack" / "install-venv.sh"), str(dest)],
        env={**os.environ, "PYTHON": str(interpreter_for_uid_1000()), "BUILD_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=600, check=False,
    )
    try:
        if done.returncode != 0:
            pytest.fail(f"hack/install-venv.sh failed:\n{done.stdout}\n{done.stderr}")
        yield dest
    finally:
        shutil.rmtree(parent)


@pytest.fixture(scope="session")
def product_image() -> Iterator[WrittenImage]:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing: run hack/install-test-deps.sh")
    output = Path(tempfile.mkdtemp(prefix="localmodel-oci-", dir="/var/tmp"))
    try:
        yield build_image(REPO, output)
    finally:
        shutil.rmtree(output)


@pytest.fixture(scope="session")
def image_rootfs(product_image: WrittenImage) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="localmodel-image-root-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        unpack_layers(product_image, root)
        yield root
    finally:
        shutil.rmtree(root)


def unpack_layers(image: WrittenImage, root: Path) -> None:
    """Each layer of `image` in order onto `root`, with owners and modes, as a container runtime
    unpacks them (the images built here have no whiteouts)."""
    with tarfile.open(image.archive) as archive:
        for layer in image.layers:
            blob = archive.extractfile("blobs/sha256/" + layer.digest.removeprefix("sha256:"))
            assert blob is not None
            with tarfile.open(fileobj=blob, mode="r|*") as layer_tar:
                # Our own archive: absolute symlink targets (/usr/bin/python3) are expected.
                layer_tar.extractall(root, numeric_owner=True, filter="fully_trusted")
