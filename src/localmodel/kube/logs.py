"""The one log format of every localmodel program: one JSON object per line with the same keys
everywhere (time, level, logger, msg, then the record's `extra=` fields, and exception), or short
readable lines for a terminal.

The agent writes JSON in a cluster and text standalone (`--log-format`); the controller JSON, or
text when its stderr is a terminal; `localmodel fetch --progress json` its warnings as JSON with
`"event": "log"` beside its progress events. Fields passed with `extra=` become JSON keys
(kubebuilder style: a fixed message plus key/values). Nothing here knows about secrets: callers
never pass credential values, and error messages are redacted before they are logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

# Attributes every LogRecord has; anything else came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JSONFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        #: Keys every line carries (e.g. `{"event": "log"}` where logs share a stream with events).
        self.fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.fields,
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{k}={v}" for k, v in _extra(record).items() if v not in (None, [], {}))
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        if fields:
            line = f"{line}  [{fields}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def setup_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None, *,
                  library_requests: bool = False) -> None:
    """Every record of the process to `stream` (stderr) in `fmt` ("json" or "text") from `level`
    on. Client libraries' per-request lines are kept only with `library_requests` (the
    controller at DEBUG); otherwise they show from WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Client libraries log every request at INFO; the agent's own lines are what matter.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "botocore", "azure", "google",
                  "huggingface_hub", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(root.level if library_requests else max(logging.WARNING, root.level))
