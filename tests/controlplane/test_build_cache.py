"""The build cache key follows the Go sources, and a missing `go` is reported clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localmodel.dev.build import built_paths, default_source_dir, ensure_built, kubernetes_version, source_digest
from localmodel.errors import ControlPlaneError, GoToolchainMissingError


@pytest.fixture
def module_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "controlplane"
    shutil.copytree(default_source_dir(), copy, ignore=shutil.ignore_patterns("bin"))
    return copy


def test_digest_is_stable_for_unchanged_sources(module_copy: Path) -> None:
    assert source_digest(module_copy) == source_digest(module_copy) == source_digest(default_source_dir())


@pytest.mark.parametrize("edited", ["go.mod", "go.sum", "cmd/etcd/main.go"])
def test_digest_changes_when_a_source_changes(module_copy: Path, edited: str) -> None:
    before = source_digest(module_copy)
    with open(module_copy / edited, "a") as handle:
        handle.write("\n// edited\n")
    assert source_digest(module_copy) != before


def test_digest_changes_when_a_go_file_is_added(module_copy: Path) -> None:
    before = source_digest(module_copy)
    (module_copy / "cmd" / "etcd" / "extra.go").write_text("package main\n")
    assert source_digest(module_copy) != before


def test_kubernetes_version_is_read_from_go_mod() -> None:
    assert kubernetes_version(default_source_dir()).startswith("v1.")


def test_missing_go_is_reported_before_building(module_copy: Path, tmp_path: Path) -> None:
    empty_cache = tmp_path / "cache"
    assert built_paths(module_copy, empty_cache) is None
    with pytest.raises(GoToolchainMissingError, match="`go` was not found"):
        ensure_built(module_copy, empty_cache, environ={"PATH": str(tmp_path / "no-such-dir")})


def test_finished_build_is_reused_without_go(module_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    finished = cache / source_digest(module_copy)
    finished.mkdir(parents=True)
    (finished / ".complete").write_text("built\n")
    paths = ensure_built(module_copy, cache, environ={"PATH": ""})
    assert paths.kube_apiserver == finished / "kube-apiserver"


def test_half_finished_build_is_not_reused(module_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / source_digest(module_copy)).mkdir(parents=True)  # no completion marker
    assert built_paths(module_copy, cache) is None


def test_a_directory_without_go_mod_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ControlPlaneError, match="no Go module"):
        ensure_built(tmp_path, tmp_path / "cache")
