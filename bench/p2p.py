"""Peer-to-peer fill: origin bytes, wall time and CPU of N agents filling one model.

    .venv/bin/python bench/p2p.py [--size-mib 512] [--shards 4] [--agents 8]
                                  [--origin-rate-mib 100] [--root DIR] [--skip-baseline]

Everything real and on this machine: the control plane built from Go modules (etcd +
kube-apiserver), the shipped agent RBAC, N `localmodel agent` processes (own root, peer port,
Pod-bound token, peer token), and the project's local Hugging Face endpoint as the origin, in
its own process, serving a model of `--shards` LFS shards from disk, optionally capped at
`--origin-rate-mib` MiB/s for all clients together (a WAN origin; 0 = loopback speed). The
origin counts the body bytes it sends (GET /_stats).

Scenarios, each on a fresh model (new URI, so no Lease or copy is shared between them):
    single     one agent alone (as deployed: peer-to-peer on, it takes the origin slot)
    p2p        N agents at once, --origin-slots 1
    liar       (--liar) as p2p, with a malicious peer advertised as complete from the start: it
               serves every shard with a flipped byte and piece tables that match its bytes
               (chain tables whose last entry is forged to the origin's sha256, so every piece
               but the last passes: the costliest lie the protocol allows)
    baseline   N agents at once with --peer-port -1 (every node reads the origin, as today)

Agents are started with an empty LocalModelNode and given the model all at once (one patch
per node, back to back); wall time runs from the first patch until every status says
ModelDownloaded. CPU-seconds are read from /proc for each agent, for the origin and for etcd +
kube-apiserver, over the same interval.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightkube import Client, KubeConfig  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.core_v1 import ConfigMap, Secret  # noqa: E402
from lightkube.types import PatchType  # noqa: E402

from localmodel.api.keys import storage_key  # noqa: E402
from localmodel.dev.controlplane import ControlPlane  # noqa: E402
from localmodel.fetch import Layout, download  # noqa: E402
from localmodel.kube import resources  # noqa: E402
from localmodel.peers.auth import PeerIdentity  # noqa: E402
from localmodel.peers.server import PeerServer, PeerServeSettings  # noqa: E402
from tests.node.agent_process import AgentProcess  # noqa: E402
from tests.node.cluster import install_crds  # noqa: E402
from tests.node.tokens import AGENT_NAMESPACE, JOBS_NAMESPACE, agent_kubeconfig, install_agent_rbac  # noqa: E402
from tests.p2p.peers import EndForgingLiar, advertise, corrupt_copy, mint_token  # noqa: E402
from tests.servers.ports import free_port  # noqa: E402

MiB = 2**20
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class _AnyCaller:
    """The liar serves whoever asks."""

    def authenticate(self, token: str) -> PeerIdentity:
        return PeerIdentity("anyone")


class Origin:
    """The local Hub in its own process, serving the model folder under every scenario's repo."""

    def __init__(self, model_dir: Path, repos: list[str], rate: float) -> None:
        argv = [sys.executable, "-m", "tests.servers.hf", "--rate-limit", str(rate)]
        for repo in repos:
            argv += ["--repo", f"{repo}={model_dir}"]
        self.process = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def bytes_served(self) -> int:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_stats", timeout=10) as response:
            return int(json.loads(response.read())["bytes_served"])

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)


def make_model(folder: Path, size: int, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["Bench"], "size": size}))
    per_shard = size // shards
    block = os.urandom(4 * MiB)
    for index in range(shards):
        with open(folder / f"model-{index + 1:05d}-of-{shards:05d}.safetensors", "wb") as handle:
            written = 0
            while written < per_shard:
                piece = block[: min(len(block), per_shard - written)]
                # Different bytes in every block, so no two pieces hash alike.
                handle.write(hashlib.sha256(f"{index}:{written}".encode()).digest() + piece[32:])
                written += len(piece)


@dataclass
class Result:
    scenario: str
    agents: int
    seconds: float
    origin_bytes: int
    model_bytes: int
    agent_cpu: float
    origin_cpu: float
    control_plane_cpu: float
    modes: dict[str, float]

    def row(self) -> str:
        ratio = self.origin_bytes / self.model_bytes
        modes = ", ".join(f"{k} {int(v)}" for k, v in sorted(self.modes.items()) if v)
        return (f"| {self.scenario} | {self.agents} | {self.seconds:.1f} | {ratio:.2f} | "
                f"{self.agent_cpu:.1f} | {self.origin_cpu:.1f} | {self.control_plane_cpu:.1f} | {modes or '–'} |")


class Bench:
    def __init__(self, plane: ControlPlane, hub: Origin, model_dir: Path, work: Path) -> None:
        self.plane = plane
        self.hub = hub
        self.model_dir = model_dir
        self.work = work
        self.admin = Client(KubeConfig.from_file(plane.kubeconfig), field_manager="bench")
        self.model_bytes = sum(p.stat().st_size for p in model_dir.iterdir())
        install_crds(plane, "localmodel")
        install_agent_rbac(plane, self.admin)
        body = ConfigMap(metadata=ObjectMeta(name="inferenceservice-config", namespace=AGENT_NAMESPACE),
                         data={"localModel": json.dumps({"enabled": True, "jobNamespace": JOBS_NAMESPACE,
                                                         "reconcilationFrequencyInSecs": 60})})
        self.admin.create(body)
        self.admin.create(Secret(metadata=ObjectMeta(name="storage-config", namespace=JOBS_NAMESPACE),
                                 stringData={"hub": json.dumps({"type": "hf", "endpoint": hub.url})}))

    def control_plane_cpu(self) -> float:
        pids = [p.pid for p in (self.plane._etcd, self.plane._apiserver) if p is not None and p.pid]  # noqa: SLF001
        return sum(cpu_seconds(pid) for pid in pids)

    def start_liar(self, scenario: str) -> tuple[PeerServer, str]:
        """A peer that claims the model complete and serves it with bytes flipped in every
        shard, with piece tables to match (a malicious node; see tests/p2p/peers.py)."""
        uri = f"hf://bench/{scenario}"
        key = storage_key(uri)
        honest = self.work / "liar-honest"
        download(uri, Layout.in_store(honest, key), settings={"HF_ENDPOINT": self.hub.url})
        liar_root = self.work / "liar"
        shards = sorted(p.name for p in (honest / "models" / key).iterdir() if p.name.endswith(".safetensors"))
        corrupt_copy(honest, liar_root, key, shards[0], [MiB + 1])
        for shard in shards[1:]:
            target = liar_root / "models" / key / shard
            data = bytearray(target.read_bytes())
            data[2 * MiB] ^= 0xFF
            target.write_bytes(bytes(data))
        server = EndForgingLiar(liar_root, PeerServeSettings(bind_address="127.0.0.1", port=0), _AnyCaller())
        endpoint = f"http://127.0.0.1:{server.start()}"
        advertise(self.admin, "bench-liar", uri, endpoint)
        return server, key

    def run(self, scenario: str, count: int, *extra: str) -> Result:
        uri = f"hf://bench/{scenario}"
        agents: list[tuple[str, AgentProcess]] = []
        roots: list[Path] = []
        try:
            for index in range(count):
                node = f"bench-{scenario}-{index}"
                self.admin.create(resources.LocalModelNode.from_dict({
                    "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
                    "metadata": {"name": node}, "spec": {"localModels": []}}))
                kubeconfig, _ = agent_kubeconfig(self.plane, self.admin, node)
                token = self.work / f"token-{node}"
                token.write_text(mint_token(self.admin, node))
                root = self.work / f"root-{node}"
                roots.append(root)
                agent = AgentProcess(
                    ["--root", str(root), "--kubeconfig", str(kubeconfig), "--progress-interval", "5",
                     "--scrub-interval", "0", "--peer-port", str(free_port()),
                     "--peer-advertise-address", "127.0.0.1", "--peer-token-file", str(token), *extra],
                    self.work / f"agent-{node}.log",
                    env={"NODE_NAME": node, "POD_NAMESPACE": AGENT_NAMESPACE}).start()
                agents.append((node, agent))
            for _node, agent in agents:
                self._wait(lambda a=agent: a.http(a.health_port, "/readyz")[0] == 200, 120)
            origin_before = self.hub.bytes_served()
            cpu_before = {node: cpu_seconds(agent.process.pid) for node, agent in agents}  # type: ignore[union-attr]
            origin_cpu_before, plane_before = self.hub.cpu(), self.control_plane_cpu()
            started = time.monotonic()
            entry = {"sourceModelUri": uri, "modelName": "m", "storage": {"key": "hub"}}
            for node, _agent in agents:
                self.admin.patch(resources.LocalModelNode, node, {"spec": {"localModels": [entry]}},
                                 patch_type=PatchType.MERGE)
            pending = {node for node, _ in agents}
            failures: dict[str, set[str]] = {}
            while pending:
                for node in list(pending):
                    status = self.admin.get(resources.LocalModelNode, node).to_dict().get("status") or {}
                    phase = (status.get("modelStatus") or {}).get("m")
                    if phase == "ModelDownloaded":
                        pending.discard(node)
                    elif phase == "ModelDownloadError":  # retried by the agent (e.g. after a liar)
                        reason = ((status.get("modelDetails") or {}).get("m") or {}).get("reason", "?")
                        failures.setdefault(node, set()).add(reason)
                if time.monotonic() - started > 1800:
                    raise TimeoutError(f"still downloading: {sorted(pending)}")
                time.sleep(0.1)
            seconds = time.monotonic() - started
            if failures:
                print(f"{scenario}: failed attempts seen (then retried) on {len(failures)} agents: "
                      f"{sorted(set().union(*failures.values()))}", flush=True)
            origin_cpu = self.hub.cpu() - origin_cpu_before
            per_agent = {n: cpu_seconds(a.process.pid) - cpu_before[n] for n, a in agents}  # type: ignore[union-attr]
            agent_cpu = sum(per_agent.values())
            print(f"{scenario}: CPU-s per agent " + ", ".join(f"{v:.2f}" for v in per_agent.values())
                  + "; peak RSS MiB " + ", ".join(f"{peak_rss_mib(a.process.pid):.0f}" for _, a in agents),  # type: ignore[union-attr]
                  flush=True)
            result = Result(scenario, count, seconds, self.hub.bytes_served() - origin_before, self.model_bytes,
                            agent_cpu, origin_cpu, self.control_plane_cpu() - plane_before, self._modes(agents))
            key = storage_key(uri)
            for root in roots:
                files = {p.name for p in (root / "models" / key).iterdir()}
                assert files == {p.name for p in self.model_dir.iterdir()}, files
            return result
        finally:
            for _node, agent in agents:  # every agent first, whatever else fails
                agent.stop()
            for node, _agent in agents:
                try:
                    self.admin.delete(resources.LocalModelNode, node)
                except Exception:  # noqa: BLE001 - an apiserver in trouble must not leave agents running
                    pass
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)

    @staticmethod
    def quarantines(log_folder: Path, scenario: str) -> tuple[int, int]:
        """(agents that quarantined a peer, rejected-piece or whole-file detections) from logs."""
        agents = detections = 0
        for log in log_folder.glob(f"agent-bench-{scenario}-*.log"):
            found = [line for line in log.read_text().splitlines() if '"peer quarantined"' in line]
            agents += bool(found)
            detections += len(found)
        return agents, detections

    @staticmethod
    def _modes(agents: list[tuple[str, AgentProcess]]) -> dict[str, float]:
        from tests.node.agent_process import metric_value

        modes: dict[str, float] = {}
        requests: dict[str, float] = {}
        for _node, agent in agents:
            text = agent.metrics()
            for mode in ("origin-slot", "peers", "origin"):
                modes[mode] = modes.get(mode, 0.0) + (
                    metric_value(text, "localmodel_fill_downloads_total", f'mode="{mode}"') or 0.0)
            for code in ("200", "206", "partial", "404", "425", "503", "busy"):
                requests[code] = requests.get(code, 0.0) + (
                    metric_value(text, "localmodel_peer_requests_total", f'code="{code}"') or 0.0)
        print("peer requests served: " + ", ".join(f"{k} {int(v)}" for k, v in requests.items() if v), flush=True)
        return modes

    @staticmethod
    def _wait(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("agent not ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--origin-rate-mib", type=float, default=100.0, help="0: no cap")
    parser.add_argument("--root", type=Path, default=None, help="where agent roots go (default: a temp dir)")
    parser.add_argument("--origin-slots", type=int, default=1, help="K for the p2p scenario")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--liar", action="store_true",
                        help="also a p2p run with a malicious peer advertised as complete from the start")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (agent logs) afterwards")
    args = parser.parse_args()
    # Every agent holds a copy, plus the origin's and a liar's: refuse to fill the filesystem
    # (on tmpfs that is memory the whole machine shares).
    needed = (args.agents + 3) * args.size_mib * MiB
    free = shutil.disk_usage(args.root or tempfile.gettempdir()).free
    if needed > 0.8 * free:
        print(f"needs {needed / 2**30:.1f} GiB in {args.root or tempfile.gettempdir()}, "
              f"{free / 2**30:.1f} GiB free: use a smaller --size-mib or another --root", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="p2p-bench-", dir=args.root))
    try:
        model_dir = work / "origin-model"
        make_model(model_dir, args.size_mib * MiB, args.shards)
        hub = Origin(model_dir, ["bench/single", "bench/p2p", "bench/baseline", "bench/liar"],
                     args.origin_rate_mib * MiB)
        try:
            with ControlPlane(work / "controlplane") as plane:
                bench = Bench(plane, hub, model_dir, work)
                load = os.getloadavg()[0]
                results = [bench.run("single", 1)]
                results.append(bench.run("p2p", args.agents, "--origin-slots", str(args.origin_slots)))
                if args.liar:
                    liar, _key = bench.start_liar("liar")
                    try:
                        results.append(bench.run("liar", args.agents, "--origin-slots", str(args.origin_slots)))
                    finally:
                        liar.stop()
                    caught_by, detections = bench.quarantines(work, "liar")
                    print(f"liar: served {liar.counters.bytes_sent / MiB:.0f} MiB of bad copies; quarantined by "
                          f"{caught_by} of {args.agents} agents ({detections} log lines); every copy verified",
                          flush=True)
                if not args.skip_baseline:
                    results.append(bench.run("baseline", args.agents, "--peer-port", "-1"))
        finally:
            hub.stop()
        rate = f"{args.origin_rate_mib:g} MiB/s" if args.origin_rate_mib else "uncapped"
        print(f"\nmodel {bench.model_bytes / MiB:.0f} MiB in {args.shards} shards + config.json; origin {rate}; "
              f"origin slots {args.origin_slots}; roots in {work}; load {load:.1f} before")
        print("| scenario | agents | wall s | origin bytes / model | agents CPU-s | origin CPU-s "
              "| etcd+apiserver CPU-s | fill modes |")
        print("|---|---|---|---|---|---|---|---|")
        for result in results:
            print(result.row())
        single = results[0].seconds
        p2p = results[1]
        print(f"\np2p wall / single wall = {p2p.seconds / single:.2f}; "
              f"p2p origin bytes / model = {p2p.origin_bytes / p2p.model_bytes:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
