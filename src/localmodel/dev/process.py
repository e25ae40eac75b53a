"""One long-running child process with its output in a log file, stopped by its own PID.

Children start in their own session, so a Ctrl-C in the terminal reaches only our process: we
then stop the children in the order a cluster needs (apiserver before etcd), SIGTERM first and
SIGKILL when they outstay the timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class ManagedProcess:
    """A named child process whose stdout and stderr go to `log_file` (appended across restarts)."""

    def __init__(self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> None:
        if self.running():
            return
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"==== starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def exit_code(self) -> int | None:
        """The exit status once it has exited; None while running or never started."""
        return self._popen.poll() if self._popen else None

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to `timeout` seconds, then SIGKILL (at once if `timeout` <= 0).
        Safe to call when not running."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM if timeout > 0 else signal.SIGKILL)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        self._popen = None

    def log_text(self) -> str:
        """The whole log ("" before the first start)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                text = log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
