"""Least privilege at run time: the agent as the DaemonSet runs it, UID/GID 1000 without
capabilities or supplementary groups, from the image's own install (hack/install-venv.sh), in a
mount namespace where only its root and its temp folder are writable and the rest of the
filesystem (/, /dev/shm, /tmp...) is read-only.

Its root starts as a fresh node's hostPath (root's, 0755) and is handed over by
`localmodel prepare-root` with CAP_CHOWN alone, as the DaemonSet's init container does.

It must do its whole job that way against the real apiserver with its bound token: download a
model, scrub it, write status and Events, and write a GCS key file for a download into its temp
folder (then remove it). Any write anywhere else would fail with EROFS and show in its log.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from tests.faults import figures
from tests.faults.conftest import FaultPlane
from tests.faults.helpers import MiB, entry, model_dir, secret
from tests.faults.observe import file_digests
from tests.faults.test_rbac import ensure
from tests.node.agent_process import AgentProcess, wait_until
from tests.node.cluster import FAST, ClusterAgents
from tests.node.tokens import AGENT_NAMESPACE, JOBS_NAMESPACE, agent_kubeconfig, install_agent_rbac
from tests.packaging.sandbox import GID, UID, pod_command
from tests.servers.gcs import TokenServer
from tests.servers.hf import LocalHub


class SandboxedAgent(AgentProcess):
    """`localmodel agent` from the image's venv, as UID 1000 with only `writable` writable."""

    def __init__(self, venv: Path, args: Sequence[str], log: Path, env: Mapping[str, str],
                 writable: Sequence[Path]) -> None:
        super().__init__(args, log)
        self.venv = venv
        self.pod_env = dict(env)
        self.writable = list(writable)

    def start(self) -> SandboxedAgent:
        command, outer = pod_command([str(self.venv / "bin" / "localmodel"), "agent", *self.args],
                                     path=[self.venv / "bin"], writable=self.writable, env=self.pod_env)
        with open(self.log, "ab") as out:
            # unshare, sh, setpriv and env all exec: this PID ends up being the agent itself.
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=outer, cwd="/",
                                            start_new_session=True)
        return self


@pytest.fixture
def sandbox_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root to make a mount namespace and drop to UID 1000")
    base = Path(tempfile.mkdtemp(prefix="localmodel-faults-", dir="/var/tmp"))  # outside /tmp
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def mounts_of(pid: int) -> dict[str, str]:
    """mount point → its per-mount options (rw/ro...), as the process sees them."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        found[fields[4]] = fields[5]
    return found


def test_the_agent_as_uid_1000_writes_only_its_root_and_temp_folder(
    fault_plane: FaultPlane, agents: ClusterAgents, hf_hub: LocalHub, gcs_token_server: TokenServer,
    image_venv: Path, sandbox_dir: Path,
) -> None:
    client = agents.client
    install_agent_rbac(fault_plane, client)
    root, temp = sandbox_dir / "root", sandbox_dir / "tmp"
    # The hostPath as the kubelet creates it on a fresh node: root's, 0755. The init container
    # (`localmodel prepare-root`, UID 0 with CAP_CHOWN only) hands it over; no manual chown.
    root.mkdir(mode=0o755)
    prepared = subprocess.run(
        ["setpriv", "--bounding-set=-all,+chown", "--inh-caps=-all,+chown", "--no-new-privs", "--",
         str(image_venv / "bin" / "localmodel"), "prepare-root", "--root", str(root),
         "--uid", str(UID), "--gid", str(GID)],
        capture_output=True, text=True, timeout=60, check=False)
    assert prepared.returncode == 0, prepared.stderr
    assert prepared.stdout.strip() == f"{root}: owner 0:0 -> {UID}:{GID}"
    # The emptyDir on /tmp: the kubelet makes it writable for the Pod's user.
    temp.mkdir(mode=0o700)
    os.chown(temp, UID, GID)
    key = gcs_token_server.write_service_account(sandbox_dir / "sa.json", "reader@localmodel-tests.iam")
    ensure(client, ConfigMap(metadata=ObjectMeta(name="inferenceservice-config", namespace=AGENT_NAMESPACE),
                             data={"localModel": json.dumps({"enabled": True, "jobNamespace": JOBS_NAMESPACE,
                                                             "reconcilationFrequencyInSecs": 1})}))
    ensure(client, secret(JOBS_NAMESPACE, "storage-config", {
        "hub": json.dumps({"type": "hf", "endpoint": hf_hub.url}),
        "gcs": json.dumps({"type": "gs", "base64_service_account": base64.b64encode(key.read_bytes()).decode()}),
    }))
    key.unlink()
    tag = agents.job_namespace[-8:]
    files = {"config.json": b"{}", "model.safetensors": os.urandom(2 * MiB)}
    hf_hub.add_commit(f"lp-{tag}/model", files)
    node = agents.node([entry(f"hf://lp-{tag}/model", "model", storage={"key": "hub"}),
                        entry(f"gs://lp-{tag}/model", "gcs-model", storage={"key": "gcs"})])
    token_kubeconfig, _ = agent_kubeconfig(fault_plane, client, node)
    kubeconfig = sandbox_dir / "kubeconfig"
    shutil.copyfile(token_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    issued_before = gcs_token_server.issued

    agent = SandboxedAgent(
        image_venv,
        ["--root", str(root), "--kubeconfig", str(kubeconfig), "--temp-dir", str(temp), "--scrub-interval", "2",
         *FAST, "--retry-initial", "600", "--retry-max", "600"],
        agents.tmp / "sandboxed-agent.log", {"NODE_NAME": node, "POD_NAMESPACE": AGENT_NAMESPACE},
        writable=[root, temp])
    agents.agents.append(agent.start())
    assert agent.process is not None
    try:
        def dropped() -> list[str] | None:
            # The PID runs unshare, sh and setpriv before it becomes the agent (exec each time).
            pid = agent.process.pid  # type: ignore[union-attr]
            if not Path(f"/proc/{pid}/exe").resolve().name.startswith("python"):
                return None
            return [line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith(("Uid:", "Gid:", "Groups:", "CapEff:"))]

        identity = wait_until(dropped, "the sandboxed agent to start", agent=agent, interval=0.05)
        mounts = mounts_of(agent.process.pid)
        agents.wait_phase(node, "model", "ModelDownloaded", agent)
        failed = agents.wait_phase(node, "gcs-model", "ModelDownloadError", agent)
        wait_until(lambda: (root / "agent-state.json").exists(), "a scrub recorded under the root", agent=agent)
        wait_until(lambda: any(e["reason"] == "Downloaded" for e in agents.events(node)), "its Events",
                   agent=agent)
    finally:
        agent.signal(signal.SIGTERM)
        exit_code = agent.wait()

    assert exit_code == 0, agent.tail()
    assert [line.strip() for line in identity] == [
        f"Uid:\t{UID}\t{UID}\t{UID}\t{UID}", f"Gid:\t{GID}\t{GID}\t{GID}\t{GID}", "Groups:",
        "CapEff:\t0000000000000000"], identity
    assert mounts["/"].startswith("ro") and mounts[str(root)].startswith("rw") and mounts[str(temp)].startswith("rw")
    writable = sorted(point for point, options in mounts.items() if options.startswith("rw")
                      and not point.startswith(("/proc", "/sys", "/dev/pts", "/dev/mqueue")))
    assert file_digests(model_dir(root, f"hf://lp-{tag}/model")) == {
        p: __import__("hashlib").sha256(d).hexdigest() for p, d in files.items()}
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in root.rglob("*")}
    assert owners == {(UID, GID)}
    # The GCS key was written to the temp folder (the token endpoint was asked with it), and removed.
    detail = failed["modelDetails"]["gcs-model"]
    # It got past the key file to GCS itself (unreachable from here, or refusing a test account).
    assert detail["reason"] in ("SourceUnavailable", "AccessDenied", "NotFound"), detail
    assert gcs_token_server.issued > issued_before
    assert list(temp.iterdir()) == []
    log = agent.log_text()
    for trouble in ("Read-only file system", "Errno 30", "Permission denied", "Errno 13", "Traceback"):
        assert trouble not in log, trouble

    figures.record("least privilege", "agent identity", "UID 1000, GID 1000, no groups, CapEff 0")
    figures.record("least privilege", "writable mounts seen by the agent", ", ".join(writable))
    figures.record("least privilege", "read-only", "/ and every other mount (/dev/shm, /tmp, /var/tmp...)")
    figures.record("least privilege", "did its job that way",
                   "download, scrub, status, Events; GCS key file in the temp folder, removed after")
    figures.record("least privilege", "EROFS / EACCES errors in its log", 0)
