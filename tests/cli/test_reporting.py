"""Pure parts of progress reporting: sizes, JSON progress throttling, JSON log records."""

import io
import json
import logging

import pytest

from localmodel.api.quantity import parse_size
from localmodel.fetch.progress import Progress, RateMeter, eta
from localmodel.fetch.reporting import JsonLines
from localmodel.kube.logs import JSONFormatter


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("64Mi", 64 << 20), ("64MiB", 64 << 20), ("1G", 10**9), ("1.5Gi", 3 << 29),
    ("200M/s", 200 * 10**6), ("10kb", 10_000),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "Mi", "12Q", "1..2G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def progress(phase: str, done: int) -> Progress:
    return Progress(phase, done, 100, 0, 1, 10.0, eta(100 - done, 10.0))


def test_json_lines_are_throttled_except_the_last() -> None:
    now = [0.0]
    stream = io.StringIO()
    lines = JsonLines(stream, "s3://b/m", "/d", interval=5, clock=lambda: now[0])
    for second, done in [(0, 0), (1, 10), (6, 60), (7, 70)]:
        now[0] = second
        lines(progress("download", done))
    lines(progress("done", 100))
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["bytes_done"] for r in records] == [0, 60, 100]
    assert records[1] == {"event": "progress", "source": "s3://b/m", "dest": "/d",
                          "phase": "download", "bytes_done": 60, "bytes_total": 100,
                          "files_done": 0, "files_total": 1, "bytes_per_second": 10,
                          "eta_seconds": 4.0}


def test_log_records_carry_their_extra_fields() -> None:
    record = logging.LogRecord("localmodel.x", logging.WARNING, "f.py", 1, "retrying %s", ("now",),
                               None)
    record.attempt = 2
    line = json.loads(JSONFormatter(fields={"event": "log"}).format(record))
    assert line.pop("time").endswith("Z")
    assert line == {"event": "log", "level": "warning", "logger": "localmodel.x", "msg": "retrying now",
                    "attempt": 2}


def test_rate_meter_uses_a_sliding_window() -> None:
    now = [0.0]
    meter = RateMeter(window=2, clock=lambda: now[0])
    assert meter.sample(0) == 0
    now[0] = 1
    assert meter.sample(100) == 100
    now[0] = 2
    assert meter.sample(300) == 150
    now[0] = 4
    assert meter.sample(400) == pytest.approx(50)  # only the last two seconds count
    assert eta(0, 0) == 0 and eta(5, 0) is None


def test_progress_bar_renders_bytes_and_files() -> None:
    from rich.console import Console

    from localmodel.fetch.reporting import ProgressBar

    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=120)
    with ProgressBar(console, "s3://bucket/model") as bar:
        bar(Progress("download", 0, 2_000_000, 0, 2, 0.0, None))
        bar(Progress("done", 2_000_000, 2_000_000, 2, 2, 1e6, 0.0))
    text = output.getvalue()
    assert "s3://bucket/model (done)" in text
    assert "2/2 files" in text
    assert "2.0/2.0 MB" in text
