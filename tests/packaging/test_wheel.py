"""The image's install, without Docker, checked twice: hack/install-venv.sh (the Dockerfile's
builder step) builds the wheel into a fresh venv on this machine; and the image built from Debian
packages (`localmodel dev image`), unpacked, where the same script made /opt/localmodel in a
chroot. localmodel runs from each as the Pod runs it (UID 1000, read-only root filesystem,
writable /tmp only, no HOME, no capabilities)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import localmodel
from localmodel.api.crds import render_all
from tests.packaging.conftest import REPO
from tests.packaging.sandbox import run_as_pod


@dataclass(frozen=True)
class Install:
    """Where the venv is, seen from this machine (`venv`) and from the Pod's root (`in_pod`);
    `root` is the image's unpacked root filesystem, or None for this machine's."""

    venv: Path
    in_pod: Path
    root: Path | None


@pytest.fixture(scope="module", params=["host-venv", "debian-image"])
def venv(request: pytest.FixtureRequest) -> Install:
    if request.param == "host-venv":
        host_venv: Path = request.getfixturevalue("image_venv")
        return Install(host_venv, host_venv, None)
    root: Path = request.getfixturevalue("image_rootfs")
    return Install(root / "opt" / "localmodel", Path("/opt/localmodel"), root)


def _pod(venv: Install, *argv: str) -> subprocess.CompletedProcess[str]:
    done = run_as_pod(argv, path=[venv.in_pod / "bin"], root=venv.root)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stderr}"
    return done


def _locked() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_canonical(name)] = version.strip()
    return pins


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_venv_holds_localmodel_and_locked_runtime_dependencies_only(venv: Install) -> None:
    # Read from the installed metadata, without running the venv's interpreter (the image's
    # links to the image's /usr/bin/python3).
    [site_packages] = venv.venv.glob("lib/python3.*/site-packages")
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--path", str(site_packages),
         "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, check=True).stdout
    installed = {_canonical(p["name"]): p["version"] for p in json.loads(listed)}
    assert installed.pop("localmodel") == localmodel.__version__
    locked = _locked()
    assert {name: locked.get(name) for name in installed} == installed, "a version differs from requirements.lock"
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in declared["dependencies"]:
        name = _canonical(requirement.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip())
        assert name in installed, f"runtime dependency {name} missing"
    assert "pytest" not in installed and "pip" not in installed  # test tools stay out of the image


def test_sandbox_is_read_only_but_tmp(venv: Install) -> None:
    """What the commands below ran under, checked rather than assumed."""
    probe = (
        "import os, pathlib, sys\n"
        "print(os.getuid(), os.getgid(), os.getgroups())\n"
        "for target in (sys.prefix + '/probe', '/var/tmp/probe', '/probe'):\n"
        "    try:\n"
        "        pathlib.Path(target).write_text('x')\n"
        "        print('writable', target)\n"
        "    except OSError as error:\n"
        "        print('refused', error.errno)\n"
        "pathlib.Path('/tmp/probe').write_text('x'); print('tmp ok')\n"
    )
    out = _pod(venv, "python", "-c", probe).stdout.splitlines()
    assert out[0] == "1000 1000 []"
    assert out[1:4] == ["refused 30"] * 3  # EROFS: the whole root filesystem is read-only
    assert out[4] == "tmp ok"


def test_help(venv: Install) -> None:
    out = _pod(venv, "localmodel", "--help").stdout
    assert "node-local model cache for Kubernetes" in out
    for command in ("crds", "version"):
        assert f"  {command} " in out


def test_version(venv: Install) -> None:
    assert _pod(venv, "localmodel", "version").stdout.strip() == localmodel.__version__
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == localmodel.__version__


def test_crds(venv: Install) -> None:
    assert _pod(venv, "localmodel", "crds").stdout == "".join(render_all().values())


def test_runs_the_installed_copy_not_the_source_tree(venv: Install) -> None:
    out = _pod(venv, "python", "-c", "import localmodel; print(localmodel.__file__)").stdout.strip()
    assert out.startswith(str(venv.in_pod / "lib")), out
    assert not list(venv.venv.rglob("*.egg-link")) and not list(venv.venv.rglob("__editable__*"))
