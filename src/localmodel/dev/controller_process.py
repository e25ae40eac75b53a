"""`localmodel controller` as a child process, as the Deployment runs it, on loopback ports: the
one helper the tests (faults, e2e) and the benchmarks (bench/scale.py) start a controller with.

Its health and metrics servers listen on free ports of 127.0.0.1, its webhooks too when given a
certificate directory; it runs in its own session with the caller's environment minus the
variables that would point it elsewhere (KUBECONFIG, POD_NAMESPACE, POD_NAME), and is stopped by
its own PID (`ManagedProcess`).
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from localmodel.dev.controlplane import free_port
from localmodel.dev.process import ManagedProcess

#: Variables of the caller's environment that would override the flags given here.
_FOREIGN = ("KUBECONFIG", "POD_NAMESPACE", "POD_NAME")


class ControllerProcess:
    def __init__(self, kubeconfig: Path, namespace: str, log_file: Path, *, identity: str,
                 webhook_cert_dir: Path | None = None, args: Sequence[str] = ()) -> None:
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.webhook_port = free_port() if webhook_cert_dir is not None else None
        self.log_file = log_file
        argv = [sys.executable, "-m", "localmodel", "controller", "--kubeconfig", str(kubeconfig),
                "--namespace", namespace, "--identity", identity, "--bind-address", "127.0.0.1",
                "--health-port", str(self.health_port), "--metrics-port", str(self.metrics_port)]
        if webhook_cert_dir is not None:
            argv += ["--webhook-cert-dir", str(webhook_cert_dir), "--webhook-host", "127.0.0.1",
                     "--webhook-port", str(self.webhook_port)]
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN}
        self.process = ManagedProcess("controller", [*argv, *args], log_file, env)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self, *, wait: float | None = 60.0) -> ControllerProcess:
        """Start it; unless `wait` is None, return once its health port listens (raises when it
        exits first or takes longer than `wait` seconds)."""
        self.process.start()
        if wait is not None:
            deadline = time.monotonic() + wait
            while not self._listening(self.health_port):
                if not self.process.running():
                    raise RuntimeError(f"controller exited with {self.process.exit_code()}: {self.process.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"controller health port {self.health_port} not listening after {wait}s")
                time.sleep(0.05)
        return self

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def running(self) -> bool:
        return self.process.running()

    def get(self, port: int, path: str, timeout: float = 120.0) -> tuple[int, str]:
        """(status, body) of GET http://127.0.0.1:port/path; an HTTP error status is returned, not raised."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def ready(self) -> bool:
        """/readyz answers 200 (informers synced). Raises when the process has exited."""
        if not self.process.running():
            raise RuntimeError(f"controller exited with {self.process.exit_code()}; see {self.log_file}")
        try:
            return self.get(self.health_port, "/readyz")[0] == 200
        except OSError:
            return False

    def metrics(self) -> str:
        return self.get(self.metrics_port, "/metrics")[1]

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown releases the leader Lease), SIGKILL after `timeout` seconds."""
        self.process.stop(timeout)
