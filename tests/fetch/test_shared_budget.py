"""Downloads sharing a `SharedBudget` (the CLI's concurrent `SRC DEST` pairs): at most the
budget's requests in flight across all of them, each file's chunks started in order (a chunk
fetched while an earlier one waits for a slot would leave a gap at the hash frontier, and the
bytes after it to be read back), and one failure stops the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from localmodel.errors import SourceNotFoundError
from localmodel.fetch import DownloadCancelled, FetchOptions, SharedBudget, download, engine
from localmodel.sources.base import Listing, RemoteFile
from tests.fetch.models import content

CHUNK = 64 * 1024
FILES = {"a": content("a", 8 * CHUNK), "b": content("b", 8 * CHUNK), "c": content("c", 8 * CHUNK)}


class CountingSource:
    """One file of FILES, served from memory; counts requests in flight across every source
    sharing `tracker`, and the order in which each file's ranges start."""

    def __init__(self, name: str, tracker: dict[str, object], *, fail: bool = False) -> None:
        self.uri = f"mem://{name}"
        self.name = name
        self.tracker = tracker
        self.fail = fail

    def list_files(self) -> Listing:
        return Listing(files=(RemoteFile(f"{self.name}.bin", len(FILES[self.name])),))

    def read_range(self, path: str, offset: int, length: int) -> Iterator[bytes]:
        lock: threading.Lock = self.tracker["lock"]  # type: ignore[assignment]
        with lock:
            self.tracker["now"] = int(self.tracker["now"]) + 1  # type: ignore[call-overload]
            self.tracker["most"] = max(int(self.tracker["most"]), int(self.tracker["now"]))  # type: ignore[call-overload]
            self.tracker.setdefault(self.name, []).append(offset)  # type: ignore[attr-defined]
        try:
            if self.fail and offset >= CHUNK:  # a permanent failure in the middle of the download
                raise SourceNotFoundError(f"{self.uri} is gone")
            gate: threading.Event = self.tracker["gate"]  # type: ignore[assignment]
            gate.wait(0.02)  # long enough for every waiting worker to line up behind the slots
            yield FILES[self.name][offset:offset + length]
        finally:
            with lock:
                self.tracker["now"] = int(self.tracker["now"]) - 1  # type: ignore[call-overload]

    def close(self) -> None:
        """Nothing to release."""


def tracker() -> dict[str, object]:
    return {"lock": threading.Lock(), "now": 0, "most": 0, "gate": threading.Event()}


def run_all(tmp_path: Path, budget: SharedBudget, seen: dict[str, object],
            failing: str = "") -> dict[str, BaseException | None]:
    options = FetchOptions(concurrency=8, chunk_size=CHUNK, checkpoint_size=CHUNK, fsync=False)

    def one(name: str) -> BaseException | None:
        try:
            download(f"mem://{name}", tmp_path / name, options=options, budget=budget,
                     source_factory=lambda _u, _s: CountingSource(name, seen, fail=name == failing))
        except BaseException as exc:  # noqa: BLE001 - returned for the assertions
            return exc
        return None

    with ThreadPoolExecutor(len(FILES)) as pool:
        return dict(zip(FILES, pool.map(one, FILES), strict=True))


@pytest.mark.parametrize("slots", [1, 2])
def test_the_budget_caps_requests_across_downloads_and_chunks_start_in_order(
        tmp_path: Path, slots: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Waiters look at the cancel flag all the time, and so lose their place in the slot's
    # queue all the time: the order of chunks must not depend on the order of waiters.
    monkeypatch.setattr(engine, "_SLOT_POLL", 0.0005)
    seen = tracker()
    errors = run_all(tmp_path, SharedBudget(slots), seen)
    assert errors == {name: None for name in FILES}
    for name, data in FILES.items():
        assert (tmp_path / name / f"{name}.bin").read_bytes() == data
    assert seen["most"] == slots  # each download alone would have run 8 at once
    if slots == 1:
        for name in FILES:
            offsets = seen[name]
            assert offsets == sorted(offsets), f"{name}: chunks started out of order: {offsets}"


def test_one_failure_cancels_the_downloads_sharing_the_budget(tmp_path: Path) -> None:
    budget = SharedBudget(1)
    seen = tracker()
    errors = run_all(tmp_path, budget, seen, failing="b")
    assert isinstance(errors["b"], SourceNotFoundError)
    assert not (tmp_path / "b").exists()
    # The others stop with DownloadCancelled, their staging kept to resume (one may have been
    # done already: the slot's waiters are served in no guaranteed order); none reports an
    # error of its own, and no half-done model appears.
    assert any(isinstance(errors[name], DownloadCancelled) for name in ("a", "c")), errors
    for name in ("a", "c"):
        error = errors[name]
        assert error is None or isinstance(error, DownloadCancelled), error
        if error is None:
            assert (tmp_path / name / f"{name}.bin").read_bytes() == FILES[name]
        else:
            assert not (tmp_path / name).exists()
            assert (tmp_path / ".localmodel" / "staging" / name / "journal.jsonl").exists()
