"""Run `localmodel agent` as a real child process, read its status, wait for conditions.

Waits poll a condition until it holds (returning as soon as it does) with a generous deadline,
so tests never depend on how fast this machine is; a deadline that passes is a hang, and the
error shows the agent's last log lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.servers.ports import free_port

T = TypeVar("T")
DEADLINE = 180.0


class AgentProcess:
    """One `localmodel agent` child, stopped by its own PID."""

    def __init__(self, args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.args = [  # defaults first: a caller's own --bind-address wins
            "--bind-address", "127.0.0.1",
            "--health-port", str(self.health_port),
            "--metrics-port", str(self.metrics_port),
            *args,
        ]
        self.log = log
        self.env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "POD_NAMESPACE")}
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from localmodel.cli import main; main()", "agent", *self.args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it outstays `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (a node crash, an OOM kill)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def http(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> str:
        return self.http(self.metrics_port, "/metrics")[1]


def wait_until(condition: Callable[[], T | None], what: str, *, agent: AgentProcess | None = None,
               timeout: float = DEADLINE, interval: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:  # a file being replaced, a key not there yet
            last_error = exc
        if agent is not None and agent.process is not None and agent.process.poll() is not None:
            raise AssertionError(f"agent exited ({agent.process.returncode}) while waiting for {what}\n"
                                 f"{agent.tail()}")
        time.sleep(interval)
    detail = f" (last error: {last_error})" if last_error else ""
    log = f"\n--- agent log ---\n{agent.tail()}" if agent is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}{log}")


def read_status_file(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / "status.json").read_text())["status"])


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text format (`labels` as written, e.g. 'result="x"')."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None
