"""The node binaries' build cache key follows their sources, and the control plane's does not
follow the node binaries' main packages (they share one Go module)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localmodel.dev.build import default_source_dir, source_digest
from localmodel.dev.nodebuild import default_pause_source, default_runtime_dir, node_digest


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Path, Path]:
    kube = tmp_path / "controlplane"
    shutil.copytree(default_source_dir(), kube, ignore=shutil.ignore_patterns("bin"))
    runtime = tmp_path / "noderuntime"
    shutil.copytree(default_runtime_dir(), runtime)
    pause = tmp_path / "pause.c"
    shutil.copy(default_pause_source(), pause)
    return kube, runtime, pause


@pytest.mark.parametrize("edited", ["kube:cmd/kubelet/main.go", "kube:go.mod", "runtime:go.mod", "runtime:go.sum", "pause"])
def test_node_digest_follows_every_source(sources: tuple[Path, Path, Path], edited: str) -> None:
    kube, runtime, pause = sources
    before = node_digest(kube, runtime, pause)
    where, _, relative = edited.partition(":")
    path = {"kube": kube / relative, "runtime": runtime / relative, "pause": pause}[where]
    with open(path, "a") as handle:
        handle.write("\n// edited\n")
    assert node_digest(kube, runtime, pause) != before


def test_control_plane_digest_ignores_the_node_main_packages(sources: tuple[Path, Path, Path]) -> None:
    kube, runtime, pause = sources
    before = source_digest(kube)
    with open(kube / "cmd" / "kubelet" / "main.go", "a") as handle:
        handle.write("\n// edited\n")
    assert source_digest(kube) == before
    assert node_digest(kube, runtime, pause) != node_digest(default_source_dir(), runtime, pause)
