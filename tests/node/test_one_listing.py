"""A download lists its origin once: adoption, the capacity check, the peer fill and the engine
share one listing, and the source that made it (whose conditional reads depend on it). In
process, over a local folder behind a scheme that counts listings."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from localmodel.api.keys import storage_key
from localmodel.fetch.options import FetchOptions
from localmodel.node.credentials import Credentials
from localmodel.node.downloads import DownloadRequest, JobResult, Jobs
from localmodel.node.store import ModelStore
from localmodel.sources import registry
from localmodel.sources.base import Listing, Settings
from localmodel.sources.local import LocalSource


class CountingSource(LocalSource):
    """`counting:///path`: the local folder /path, with every listing counted."""

    listings: list[str] = []

    def __init__(self, uri: str, settings: Settings) -> None:
        super().__init__(uri.removeprefix("counting://"), settings)
        self.uri = uri

    def list_files(self) -> Listing:
        CountingSource.listings.append(self.uri)
        return super().list_files()


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setitem(registry._registry, "counting", registry.Entry(f"{__name__}:CountingSource"))
    CountingSource.listings = []
    yield CountingSource.listings


def model(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 1000)
    return folder


def download(store: ModelStore, uri: str, options: FetchOptions) -> JobResult:
    jobs = Jobs(store, max_concurrent=1, options=options)
    try:
        key = storage_key(uri)
        assert jobs.submit_download(DownloadRequest(key=key, uri=uri, credentials=Credentials()), frozenset())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            results = jobs.take_results()
            if results:
                return results[0]
            time.sleep(0.02)
        raise AssertionError("the download did not finish")
    finally:
        jobs.shutdown(5)


@pytest.mark.parametrize("adopt", [True, False], ids=["adoption-tried", "adoption-off"])
def test_a_download_lists_its_origin_once(tmp_path: Path, counting: list[str], adopt: bool) -> None:
    uri = f"counting://{model(tmp_path / 'origin')}"
    result = download(ModelStore(tmp_path / "root"), uri, FetchOptions(adopt=adopt))
    assert result.ok and not result.adopted and result.files_total == 2, result
    assert counting == [uri]


def test_adopting_a_folder_lists_its_origin_once(tmp_path: Path, counting: list[str]) -> None:
    uri = f"counting://{model(tmp_path / 'origin')}"
    store = ModelStore(tmp_path / "root")
    left = store.layout(storage_key(uri)).dest  # as KServe's agent left it: files, no manifest
    shutil.copytree(tmp_path / "origin", left)
    result = download(store, uri, FetchOptions())
    assert result.ok and result.adopted, result
    assert counting == [uri]
