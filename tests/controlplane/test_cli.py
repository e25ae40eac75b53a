"""`localmodel dev cluster` runs the control plane in the foreground and stops on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localmodel.dev.build import ensure_built

# Start-up takes seconds when the binaries are cached (the session plugin builds them first);
# the deadline only stops a hung test.
READY_DEADLINE = 300.0


def _read_until_ready(process: subprocess.Popen[str]) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 1.0)
        if readable:
            line = process.stdout.readline()
            if not line:
                break  # exited
            lines.append(line)
            if "ready" in line:
                # The lines after the ready line (kubeconfig, kubectl) come right after it.
                for _ in range(4):
                    lines.append(process.stdout.readline())
                return lines
    process.kill()
    pytest.fail(f"no ready line; output:\n{''.join(lines)}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_dev_cluster_prints_ready_and_stops_on_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    # The session plugin only builds for tests that use `kube`; make sure the binaries exist
    # before the subprocess's own start-up clock runs.
    kubectl = ensure_built().kubectl
    workdir = tmp_path / "cluster"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("localmodel")), "dev", "cluster", "--dir", str(workdir), "--no-controller-manager"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = "".join(_read_until_ready(process))
        kubeconfig = workdir / "kubeconfig"
        assert str(kubeconfig) in output
        listed = subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), "get", "ns", "default", "-o", "name"],
            capture_output=True, text=True, check=True,
        )
        assert listed.stdout.strip() == "namespace/default"
        ports = json.loads((workdir / "ports.json").read_text())

        process.send_signal(stop_signal)
        remaining, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, remaining
    assert "stopped" in remaining
    assert not _port_open(ports["apiserver"])
    assert not _port_open(ports["etcd-client"])
