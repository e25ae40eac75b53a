"""The limit on files per model: a listing longer than `max_files` fails with TooManyFiles
before anything is staged, and a paginated listing stops at the first page past the limit
(the 10^5-file case of the fault suite; memory per file is measured in bench/many_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localmodel.errors import TooManyFilesError
from localmodel.fetch import FetchOptions, Layout, download
from localmodel.sources.base import MAX_FILES_SETTING
from localmodel.sources.hf import HFSource
from tests.fetch.models import write_tree
from tests.servers.hf import LocalHub


def test_a_folder_with_more_files_than_the_limit_is_refused_before_staging(tmp_path: Path) -> None:
    source = write_tree(tmp_path / "src", {f"f{i:02d}.txt": b"x" for i in range(11)})
    dest = tmp_path / "m"
    with pytest.raises(TooManyFilesError, match="more than 10 files"):
        download(str(source), dest, options=FetchOptions(max_files=10, fsync=False))
    assert not dest.exists() and not Layout.beside(dest).staging.exists()
    download(str(source), dest, options=FetchOptions(max_files=11, fsync=False))
    assert len(list(dest.iterdir())) == 11


def test_a_paginated_listing_stops_at_the_first_page_past_the_limit(hf_hub: LocalHub) -> None:
    hf_hub.declare("limits/many", {f"f{i:05d}.txt": 1 for i in range(5 * hf_hub.tree_page_size)})
    source = HFSource("hf://limits/many", {"HF_ENDPOINT": hf_hub.url, MAX_FILES_SETTING: "1500"})
    with pytest.raises(TooManyFilesError, match="hf://limits/many lists more than 1500 files"):
        source.list_files()
    pages = [path for method, path in hf_hub.requests if "/tree/" in path]
    assert len(pages) == 2  # 1000 + 1000 > 1500: the other three pages are never asked for


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FetchOptions(max_files=0)
