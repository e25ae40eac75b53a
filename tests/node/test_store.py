"""The agent's model store: a manifest it withdrew (damage found by a scrub) is never re-adopted,
across restarts, until the model is downloaded again."""

from __future__ import annotations

from pathlib import Path

from localmodel.fetch import FetchOptions
from localmodel.node.store import ModelStore
from tests.node.models import make_model

KEY = "0123456789abcdef"
OPTIONS = FetchOptions(fsync=False)


def test_withdrawn_folder_is_not_adopted_until_downloaded_again(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_model(source, {"config.json": 100, "w.bin": 200_000})
    store = ModelStore(tmp_path / "root")
    store.ensure_root()
    manifest = store.download(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None)
    assert store.adopt(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None) is None

    store.withdraw(KEY)  # what the agent does when a scrub finds a flipped byte
    restarted = ModelStore(tmp_path / "root")
    assert restarted.withdrawn() == {KEY}
    assert restarted.adopt(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None) is None

    again = restarted.download(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None)
    assert again.files == manifest.files and "adopted" not in again.details
    assert restarted.withdrawn() == set()


def test_folder_without_manifest_is_adopted_and_delete_forgets_a_withdrawal(tmp_path: Path) -> None:
    source = tmp_path / "source"
    make_model(source, {"w.bin": 100_000})
    store = ModelStore(tmp_path / "root")
    make_model(store.layout(KEY).dest, {"w.bin": 100_000})  # KServe's copy
    adopted = store.adopt(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None)
    assert adopted is not None and adopted.details["adopted"] == "true"

    store.withdraw(KEY)
    store.delete(KEY)
    assert store.withdrawn() == set()
    make_model(store.layout(KEY).dest, {"w.bin": 100_000})
    assert store.adopt(KEY, source.as_uri(), settings={}, options=OPTIONS, progress=lambda p: None) is not None
