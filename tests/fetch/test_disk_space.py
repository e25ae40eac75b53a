"""Running out of disk: refused up front when the free space is visibly short, and a clean
InsufficientSpaceError (staging removed) when the disk fills up mid-download.

Uses a real, tiny tmpfs mounted for the test (needs root, as on the project's machines)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.errors import InsufficientSpaceError
from localmodel.fetch import FetchOptions, Layout, download
from localmodel.fetch.progress import Progress
from tests.fetch.models import content, write_tree

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_too_large_model_is_refused_before_download(small_disk: Path, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"a.bin": content("a", 5 * MiB),
                                           "b.bin": content("b", 5 * MiB)})
    dest = small_disk / "models" / "m"
    with pytest.raises(InsufficientSpaceError, match="need"):
        download(str(source), dest, options=FetchOptions(fsync=False))
    assert not dest.exists()
    assert not Layout.beside(dest).staging.exists()


def test_disk_filling_up_midway_is_a_clean_error(small_disk: Path, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {"a.bin": content("a", 3 * MiB),
                                           "b.bin": content("b", 3 * MiB)})
    dest = small_disk / "m"
    filler = small_disk / "filler"

    def fill_the_disk(progress: Progress) -> None:
        # Another tenant grabs the space after the free-space check passed.
        if not filler.exists():
            with open(filler, "wb") as handle:
                try:
                    handle.write(b"\0" * 7 * MiB)
                except OSError:
                    pass

    options = FetchOptions(concurrency=2, chunk_size=256 * 1024, fsync=False,
                           rate_limit=30 * MiB)
    with pytest.raises(InsufficientSpaceError, match="no space"):
        download(str(source), dest, options=options, progress=fill_the_disk)
    assert not dest.exists()
    assert not Layout.beside(dest).staging.exists()
    filler.unlink()
    download(str(source), dest, options=FetchOptions(fsync=False))  # fine once space is back


def test_a_mount_point_destination_is_filled_in_place(small_disk: Path, tmp_path: Path) -> None:
    # As a storage-initializer's /mnt/models: the folder itself cannot be renamed.
    source = write_tree(tmp_path / "src", {"config.json": b"{}", "w/x.bin": content("x", MiB)})
    layout = Layout.for_path(small_disk)
    assert layout.in_place
    manifest = download(str(source), small_disk, options=FetchOptions())  # with fsync
    assert sorted(os.listdir(small_disk)) == [".localmodel", "config.json", "w"]
    assert layout.manifest == small_disk / ".localmodel" / "manifest.json"
    assert download(str(source), small_disk) == manifest  # complete: nothing to do
