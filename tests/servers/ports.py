"""Small helpers shared by the server fixtures: free ports and waiting for a listener."""

from __future__ import annotations

import socket
import subprocess
import time

from localmodel.dev.controlplane import free_port

__all__ = ["free_port", "stop_process", "wait_for_port"]


def wait_for_port(port: int, *, process: subprocess.Popen[bytes] | None = None,
                  timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until host:port accepts connections; fail early if `process` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Terminate one process we started, by its PID, and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
