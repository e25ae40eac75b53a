"""Showing download progress to a person (rich bar on a TTY) or to a log collector (JSON lines)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress

from localmodel.fetch.progress import Progress

class JsonLines:
    """Writes one JSON object per line at most every `interval` seconds (and always the last)."""

    def __init__(self, stream: IO[str], source: str, dest: str, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.source, self.dest = stream, source, dest
        self.interval = interval
        self._clock = clock
        self._last = float("-inf")

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "source": self.source, "dest": self.dest, **fields}
        self.stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.stream.flush()

    def __call__(self, progress: Progress) -> None:
        now = self._clock()
        if progress.phase != "done" and now - self._last < self.interval:
            return
        self._last = now
        self.emit("progress", phase=progress.phase, bytes_done=progress.bytes_done,
                  bytes_total=progress.bytes_total, files_done=progress.files_done,
                  files_total=progress.files_total, bytes_per_second=round(progress.rate),
                  eta_seconds=None if progress.eta is None else round(progress.eta, 1))


class ProgressBar:
    """A rich progress bar for one download; use as a context manager."""

    def __init__(self, console: Console, label: str) -> None:
        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
            console=console, transient=False)
        self._label = label
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        self._bar.__enter__()
        self._task = self._bar.add_task(self._label, total=None, files="")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._bar.__exit__(kind, error, trace)

    def __call__(self, progress: Progress) -> None:
        assert self._task is not None
        description = self._label if progress.phase == "download" else \
            f"{self._label} ({progress.phase})"
        self._bar.update(self._task, completed=progress.bytes_done, total=progress.bytes_total,
                         description=description,
                         files=f"{progress.files_done}/{progress.files_total} files")
