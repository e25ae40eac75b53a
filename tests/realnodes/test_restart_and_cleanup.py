"""Stopping real nodes leaves nothing on the host; a killed run does not break the next start;
the nodes restart with their images and objects."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from localmodel.dev.nodes import RealNodeCluster, host_leftovers, node_data_root, remove_node_data

pytestmark = pytest.mark.realnodes


def test_stop_cleans_the_host_and_a_killed_run_does_not_break_the_next_start(
    real_nodes: RealNodeCluster, busybox_image: str, tmp_path: Path
) -> None:
    assert host_leftovers([real_nodes.workdir]) != []  # the probe sees a running cluster

    real_nodes.stop()
    assert host_leftovers([real_nodes.workdir]) == []

    # The same cluster starts again with its images (containerd's root is kept).
    real_nodes.start()
    assert busybox_image in real_nodes.ctr("node-2", "images", "ls", "-q").stdout.split()
    real_nodes.stop()

    # Another run, killed with SIGKILL once Ready: it leaves processes, mounts, links, chains.
    killed_dir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        cli = subprocess.Popen(
            [sys.executable, "-m", "localmodel", "dev", "cluster", "--dir", str(killed_dir), "--real-nodes", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "press Ctrl-C" not in log.read_text():
            assert cli.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
    finally:
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
    assert host_leftovers([killed_dir]) != []

    # The session's cluster starts again over those leftovers, with its objects and images.
    real_nodes.start()
    assert [entry for entry in host_leftovers([killed_dir]) if str(killed_dir) in entry] == []
    nodes = real_nodes.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert nodes == ["node/node-1", "node/node-2"]
    assert busybox_image in real_nodes.ctr("node-1", "images", "ls", "-q").stdout.split()
    remove_node_data(killed_dir)
    assert not node_data_root(killed_dir).exists()
