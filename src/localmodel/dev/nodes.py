"""Real Kubernetes nodes on this machine, next to a local ControlPlane.

`RealNodeCluster` starts a ControlPlane whose apiserver listens on an address Pods can reach,
then kube-scheduler, kube-proxy and N nodes. Each node is a real kubelet with its own containerd
(own root, state, socket and config), runc, and the CNI plugins bridge + host-local + portmap +
loopback, so Pods run as real containers:

    with RealNodeCluster(workdir, nodes=2) as cluster:
        cluster.import_image(archive)                  # an OCI archive, into every node
        cluster.control_plane.kubectl("apply", "-f", ...)

The binaries come from Go modules (localmodel.dev.nodebuild), as the control plane's do.

Network. All nodes share the host's network namespace (the machine has one), so:
- a bridge with no ports, `lm-host0` (the kernel has no dummy driver), holds HOST_ADDRESS (10.244.0.1/16): the apiserver listens and
  advertises there, each kubelet serves there on its own port, and it is every node's InternalIP;
  the `kubernetes` Service's endpoint is HOST_ADDRESS, so Pods reach the apiserver by its
  ClusterIP (KUBERNETES_SERVICE_HOST). Its connected route, and a route for the Service range,
  also send traffic for Pod IPs of no live bridge and for unknown ClusterIPs into that interface,
  which drops it: nothing for the cluster's ranges leaves the machine;
- node i (1-based) has the bridge `lm-br<i>` with 10.244.<i>.1/24 and Pod CIDR 10.244.<i>.0/24;
  Pods on different nodes reach each other through the host's routing (ip_forward);
- expose_to_pods(port) makes a server on the host's 127.0.0.1:port reachable from Pods at
  HOST_ADDRESS:port (a DNAT; route_localnet on the nodes' bridges only);
- one kube-proxy (iptables mode) serves all nodes, since they share the iptables of one network
  namespace; the apiserver reaches webhook Services by their ClusterIP through its rules;
- the chain LOCALMODEL-NODES in FORWARD lets Pods talk to Pods and drops everything else they
  would send through the host (no masquerading, no egress).

Host state. Processes run in cgroups under /localmodel-nodes/ (every v1 hierarchy); each
kubelet's cgroupRoot is /localmodel-nodes/<node>, so two kubelets never share a cgroup.
Runtime state (sockets, mounts of running containers) is in /run/localmodel-nodes/<node>;
images, snapshots and the kubelet's root dir are in the work directory. A machine-wide lock lets
one RealNodeCluster run at a time (a second waits), and a start first removes whatever a killed
earlier run left: its processes (by cgroup), mounts, interfaces, iptables chains and cgroups.
The kubelet sets vm.overcommit_memory, kernel.panic and kernel.panic_on_oops as it does on any
node; ip_forward and bridge-nf-call-iptables are set to 1 and restored on stop.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import tempfile
import urllib.error
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from localmodel.dev.controlplane import DEFAULT_CONTROLLERS, ControlPlane, free_port
from localmodel.dev.kubeconfig import write_kubeconfig
from localmodel.dev.nodebuild import PAUSE_IMAGE, NodePaths, ensure_node_built
from localmodel.dev.oci import import_image as ctr_import
from localmodel.dev.process import ManagedProcess
from localmodel.errors import ControlPlaneError

__all__ = [
    "BUSYBOX_IMAGE", "CLUSTER_CIDR", "HOST_ADDRESS", "NODE_CONTROLLERS", "PAUSE_IMAGE", "LocalNode", "RealNodeCluster",
    "cleanup_leftovers", "host_leftovers", "node_data_root", "remove_node_data", "write_busybox_image",
]

#: Every Pod IP is in here; node i gets 10.244.<i>.0/24.
CLUSTER_CIDR = "10.244.0.0/16"
#: The host's own address in the cluster: apiserver, kubelets, every node's InternalIP.
HOST_ADDRESS = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
HOST_INTERFACE = "lm-host0"
BRIDGE_PREFIX = "lm-br"
FORWARD_CHAIN = "LOCALMODEL-NODES"
EXPOSE_CHAIN = "LOCALMODEL-EXPOSE"

#: What a cluster with workloads needs beyond DEFAULT_CONTROLLERS: Deployments, ReplicaSets,
#: DaemonSets, Jobs, Services' endpoints, PV/PVC binding and protection, volume attach state,
#: Node readiness taints, and clean-up of Pods of deleted nodes.
NODE_CONTROLLERS: tuple[str, ...] = (
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "job-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-attach-detach-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "node-lifecycle-controller",
    "pod-garbage-collector-controller",
)

RUN_DIR = Path("/run/localmodel-nodes")
DATA_DIR = Path("/var/lib/localmodel-nodes")
CGROUP_PARENT = "localmodel-nodes"
_STATE_FILE = RUN_DIR / "state.json"
_LOCK_FILE = Path("/run/lock/localmodel-nodes.lock")
_SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The RealNodeCluster of this process that holds the machine-wide lock, if any.
_holders: list[RealNodeCluster] = []


@dataclass
class LocalNode:
    """One real node: its name, Pod CIDR, directories, ports and processes."""

    name: str
    index: int
    workdir: Path
    #: node_data_root() of the cluster's work directory.
    data_root: Path
    kubelet_port: int = 0
    containerd: ManagedProcess | None = field(default=None, repr=False)
    kubelet: ManagedProcess | None = field(default=None, repr=False)

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        """The node's bridge address: Pods' default gateway, the host as Pods of this node see it."""
        return f"10.244.{self.index}.1"

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def run_dir(self) -> Path:
        """Short paths for sockets and runtime state (a unix socket path has at most 107 bytes)."""
        return RUN_DIR / self.name

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def data_dir(self) -> Path:
        """The kubelet's root dir and containerd's root (images, snapshots) live here, at a short
        path: the kubelet makes unix sockets under its root dir (pod-resources, plugins), and a
        socket path has at most 107 bytes, which a test's temporary directory can exceed."""
        return self.data_root / self.name

    @property
    def kubelet_root(self) -> Path:
        """Pod volumes (emptyDir, projected tokens, ...) are under <kubelet_root>/pods/."""
        return self.data_dir / "kubelet"

    @property
    def containerd_root(self) -> Path:
        return self.data_dir / "containerd"

    @property
    def cgroup(self) -> str:
        """The kubelet's cgroupRoot; Pods are under <cgroup>/kubepods."""
        return f"/{CGROUP_PARENT}/{self.name}"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    def pod_cgroup(self, pod_uid: str, controller: str = "memory") -> Path:
        """The cgroup v1 directory of a Pod on this node for `controller` (memory, cpuacct,
        ...), e.g. to read memory.usage_in_bytes or cpuacct.usage of a Pod under its limits;
        its containers are subdirectories named by container ID."""
        found = list(Path("/sys/fs/cgroup", controller).glob(f"{self.cgroup.strip('/')}/kubepods/**/pod{pod_uid}"))
        if len(found) != 1:
            raise ControlPlaneError(f"no single {controller} cgroup for Pod {pod_uid} on {self.name}: {found}")
        return found[0]

    def host_path(self, path: str) -> Path:
        """Where this node's own copy of host path `path` (RealNodeCluster node_host_paths) is
        seen from the host."""
        return self.workdir / "host" / path.strip("/")


class RealNodeCluster:
    """A ControlPlane, kube-scheduler, kube-proxy and `nodes` real nodes. A context manager.

    `node_labels`: labels every node registers with (e.g. {"kserve/localmodel": "worker"}).
    `node_host_paths`: host paths each node has for itself, e.g. ("/models",): the node's
    containerd, shims and kubelet run in a mount namespace of their own in which each such path
    is a bind mount of `<node workdir>/host/<path>`, so hostPath volumes there (the agent's
    /models) differ per node as on separate machines; the host sees them under each node's
    `host_path()`. Other paths are the host's, shared by all nodes.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = 2,
        node_names: Sequence[str] | None = None,
        node_labels: dict[str, str] | None = None,
        node_host_paths: Sequence[str] = (),
        controllers: Sequence[str] = (*DEFAULT_CONTROLLERS, *NODE_CONTROLLERS),
        apiserver_args: Sequence[str] = (),
        node_paths: NodePaths | None = None,
        start_timeout: float = 180.0,
        lock_timeout: float = 1800.0,
    ) -> None:
        if not 1 <= nodes <= 200:
            raise ValueError("nodes must be between 1 and 200")
        names = list(node_names) if node_names else [f"node-{i}" for i in range(1, nodes + 1)]
        if len(names) != nodes or len(set(names)) != nodes:
            raise ValueError("node_names must be `nodes` distinct names")
        self.workdir = Path(workdir).resolve()
        self.node_labels = dict(node_labels or {})
        for path in node_host_paths:
            if not path.startswith("/") or ".." in Path(path).parts or Path(path) == Path("/"):
                raise ValueError(f"node_host_paths: {path!r} is not an absolute path below /")
        self.node_host_paths = tuple(node_host_paths)
        self.start_timeout = start_timeout
        self.lock_timeout = lock_timeout
        self._node_paths = node_paths
        self.control_plane = ControlPlane(
            self.workdir / "controlplane",
            controllers=controllers,
            # Node names are not in any DNS: the apiserver reaches kubelets by InternalIP.
            apiserver_args=("--kubelet-preferred-address-types=InternalIP", *apiserver_args),
            bind_address=HOST_ADDRESS,
            start_timeout=start_timeout,
        )
        self.nodes = [
            LocalNode(name, i, self.workdir / "nodes" / name, node_data_root(self.workdir))
            for i, name in enumerate(names, 1)
        ]
        self._scheduler: ManagedProcess | None = None
        self._proxy: ManagedProcess | None = None
        self._lock: IO[str] | None = None
        #: Seconds each start phase took ("total" leaves out the wait for the machine-wide lock).
        self.timings: dict[str, float] = {}

    # ---- what tests and the CLI use -------------------------------------------------------------

    @property
    def paths(self) -> NodePaths:
        if self._node_paths is None:
            self._node_paths = ensure_node_built()
        return self._node_paths

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.control_plane.kubectl(*args, **kwargs)

    def node(self, name: str) -> LocalNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def import_image(self, archive: Path, nodes: Sequence[str] | None = None) -> None:
        """Import an OCI image-layout archive (localmodel.dev.oci) into the containerd of every
        node (or of `nodes`), where the kubelet finds it by the archive's reference; Pods use
        `imagePullPolicy: IfNotPresent` or `Never`, since no registry is reachable."""
        for node in self.nodes:
            if nodes is None or node.name in nodes:
                ctr_import(self.paths.ctr, node.containerd_socket, archive)

    def ctr(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `ctr -n k8s.io ARGS` against one node's containerd."""
        command = [str(self.paths.ctr), "--address", str(self.node(node).containerd_socket), "-n", "k8s.io", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)} on {node} failed: {result.stderr.strip()}")
        return result

    # ---- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> RealNodeCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, wait_ready: bool = True) -> RealNodeCluster:
        paths = self.paths
        self._phase("lock", self._take_lock)
        started = time.monotonic()
        atexit.register(self.stop)
        try:
            self._phase("cleanup", cleanup_leftovers)
            self._claim_data_dir()
            self._record_state()
            self._phase("host network", self._setup_host)
            self._phase("control plane", self._start_control_plane)
            self._phase("scheduler and proxy", lambda: self._start_host_components(paths))
            self._phase("containerd", lambda: self._start_runtimes(paths))
            self._phase("kubelets", lambda: self._start_kubelets(paths))
            if wait_ready:
                self._phase("nodes ready", self.wait_ready)
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every process and remove what the nodes left on the host. Idempotent."""
        if self._lock is None:
            return
        for node in self.nodes:
            if node.kubelet is not None:
                node.kubelet.stop(10)
        for process in (self._proxy, self._scheduler):
            if process is not None:
                process.stop(10)
        self.control_plane.stop()
        for node in self.nodes:
            if node.containerd is not None:
                node.containerd.stop(10)
        try:
            cleanup_leftovers()
        finally:
            self._release_lock()
            atexit.unregister(self.stop)

    def wait_ready(self) -> None:
        """Wait until every Node is Ready, then record each Pod CIDR in its Node's spec."""
        deadline = time.monotonic() + self.start_timeout
        pending = {node.name for node in self.nodes}
        while pending:
            self._check_running()
            result = self.kubectl("get", "nodes", "-o", "json", check=False)
            if result.returncode == 0:
                for item in json.loads(result.stdout)["items"]:
                    conditions = {c["type"]: c["status"] for c in item["status"].get("conditions", [])}
                    if conditions.get("Ready") == "True":
                        pending.discard(item["metadata"]["name"])
            if not pending:
                break
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"nodes {sorted(pending)} not Ready after {self.start_timeout:.0f}s; kubelet logs in "
                    f"{self.nodes[0].logs_dir.parent}/*/logs"
                )
            time.sleep(0.5)
        for node in self.nodes:
            # Nothing allocates Node.spec.podCIDR here (no node-ipam controller): the CNI config
            # fixes each node's range, and the Node object is told the same.
            self.kubectl(
                "patch", "node", node.name, "--type=merge",
                "-p", json.dumps({"spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}}),
                check=False,
            )

    def failed_component(self) -> ManagedProcess | None:
        """A component that exited on its own, if any (for long-running foreground use)."""
        failed = self.control_plane.failed_component()
        if failed is not None:
            return failed
        for process in (self._scheduler, self._proxy, *(p for n in self.nodes for p in (n.containerd, n.kubelet))):
            if process is not None and process.pid is not None and not process.running():
                return process
        return None

    # ---- internals ------------------------------------------------------------------------------

    def _phase(self, name: str, action: Any) -> None:
        began = time.monotonic()
        action()
        self.timings[name] = time.monotonic() - began

    def _check_running(self) -> None:
        failed = self.failed_component()
        if failed is not None:
            raise ControlPlaneError(
                f"{failed.name} exited with status {failed.exit_code()}; log {failed.log_file}:\n{failed.log_tail()}"
            )

    def _take_lock(self) -> None:
        if _holders:
            # flock would make this process wait for itself.
            raise ControlPlaneError(
                "a RealNodeCluster already runs in this process; real nodes share the host, so only "
                "one runs at a time (stop it first)"
            )
        _LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = open(_LOCK_FILE, "w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise ControlPlaneError(
                        f"another RealNodeCluster on this machine holds {_LOCK_FILE} (real nodes share the "
                        "host's network and cgroups, so one runs at a time)"
                    ) from None
                time.sleep(1)
        self._lock = lock
        _holders.append(self)

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
            _holders.remove(self)

    def _claim_data_dir(self) -> None:
        """The nodes' data (images, kubelet state) is kept per work directory, so the same
        cluster restarts with its images; data of clusters whose work directory is gone (a
        test's temporary directory) is deleted."""
        if DATA_DIR.exists():
            for root in DATA_DIR.iterdir():
                owner = root / "owner"
                if root.is_dir() and (not owner.exists() or not Path(owner.read_text()).exists()):
                    shutil.rmtree(root, ignore_errors=True)
        root = node_data_root(self.workdir)
        root.mkdir(parents=True, exist_ok=True)
        (root / "owner").write_text(str(self.workdir))

    def remove_data(self) -> None:
        """Delete the nodes' images, snapshots and kubelet state after stop(); the next start
        begins with empty nodes."""
        if self._lock is not None:
            raise ControlPlaneError("remove_data() needs a stopped cluster")
        remove_node_data(self.workdir)

    def _record_state(self) -> None:
        """What the next start must undo if this run is killed. Called right after the clean-up,
        so the sysctls read here are the host's own values."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        _STATE_FILE.write_text(json.dumps({
            "workdir": str(self.workdir),
            # Mounts under these directories are removed.
            "nodes": [str(node.workdir) for node in self.nodes],
            "sysctls": {name: _read_sysctl(name) for name in _SYSCTLS if (Path("/proc/sys") / name).exists()},
            # Mount points made on the host for node_host_paths (removed while empty).
            "made_host_paths": [path for path in self.node_host_paths if not Path(path).exists()],
        }))

    def _setup_host(self) -> None:
        for name in _SYSCTLS:
            _write_sysctl(name, "1")
        _ip("link", "add", HOST_INTERFACE, "type", "bridge")
        _ip("addr", "add", f"{HOST_ADDRESS}/16", "dev", HOST_INTERFACE)
        _ip("link", "set", HOST_INTERFACE, "up")
        # ClusterIPs must have a route for the host's own connections (kube-proxy rewrites them
        # after routing); into the dummy interface, one no rule matches is dropped.
        _ip("route", "add", SERVICE_CIDR, "dev", HOST_INTERFACE)
        _iptables("-N", FORWARD_CHAIN)
        _iptables("-A", FORWARD_CHAIN, "-s", CLUSTER_CIDR, "-d", CLUSTER_CIDR, "-j", "ACCEPT")
        _iptables("-A", FORWARD_CHAIN, "-s", CLUSTER_CIDR, "-j", "DROP")
        _iptables("-A", FORWARD_CHAIN, "-d", CLUSTER_CIDR, "-j", "DROP")
        _iptables("-I", "FORWARD", "1", "-j", FORWARD_CHAIN)
        _iptables("-t", "nat", "-N", EXPOSE_CHAIN)
        _iptables("-t", "nat", "-A", "PREROUTING", "-j", EXPOSE_CHAIN)
        for node in self.nodes:
            # Made here rather than by the CNI bridge plugin on the first Pod (it adopts a bridge
            # of its name), so that route_localnet is set before any Pod sends: it lets the
            # DNAT of expose_to_pods() deliver to 127.0.0.1, on these bridges only.
            _ip("link", "add", node.bridge, "type", "bridge")
            _ip("link", "set", node.bridge, "up")
            _write_sysctl(f"net/ipv4/conf/{node.bridge}/route_localnet", "1")
        _make_cgroup(f"/{CGROUP_PARENT}")

    def expose_to_pods(self, port: int) -> tuple[str, int]:
        """Make a server of this host that listens on 127.0.0.1:`port` (the test servers do)
        reachable from Pods at HOST_ADDRESS:`port`: Pods' packets to that address and port are
        rewritten to 127.0.0.1 in the kernel (iptables DNAT), with no proxy process in the
        path. Returns (HOST_ADDRESS, port). Removed when the cluster stops."""
        for node in self.nodes:
            _iptables("-t", "nat", "-A", EXPOSE_CHAIN, "-i", node.bridge, "-d", HOST_ADDRESS, "-p", "tcp",
                      "--dport", str(port), "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}")
        return HOST_ADDRESS, port

    def _start_control_plane(self) -> None:
        self.control_plane.start()
        # Into our cgroup tree, so that the clean-up after a killed run stops them too (etcd
        # would otherwise hold its data directory and the next start would hang on it).
        directories = _make_cgroup(f"/{CGROUP_PARENT}/controlplane")
        for pid in self.control_plane.pids.values():
            for directory in directories:
                (directory / "cgroup.procs").write_text(f"{pid}\n")

    def _start_host_components(self, paths: NodePaths) -> None:
        plane = self.control_plane
        kubeconfigs = self.workdir / "kubeconfigs"
        scheduler_kubeconfig = self._client_kubeconfig(
            kubeconfigs / "kube-scheduler.yaml", "system:kube-scheduler", [], "kube-scheduler"
        )
        self._scheduler = self._managed(
            "kube-scheduler",
            [str(paths.kube_scheduler), f"--kubeconfig={scheduler_kubeconfig}", "--leader-elect=false",
             "--secure-port=0", "--v=1"],
            plane.logs_dir / "kube-scheduler.log",
            f"/{CGROUP_PARENT}/host",
        )
        proxy_kubeconfig = self._client_kubeconfig(kubeconfigs / "kube-proxy.yaml", "system:kube-proxy", [], "kube-proxy")
        proxy_config = self.workdir / "kube-proxy.yaml"
        proxy_config.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(proxy_kubeconfig)},
            "hostnameOverride": self.nodes[0].name,
            "clusterCIDR": CLUSTER_CIDR,
            "bindAddress": HOST_ADDRESS,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{HOST_ADDRESS}/32"],
            # Leave the host's conntrack table sizes and timeouts as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False, "syncPeriod": "30s", "minSyncPeriod": "0s"},
        }))
        self._proxy = self._managed(
            "kube-proxy", [str(paths.kube_proxy), f"--config={proxy_config}", "--v=1"],
            plane.logs_dir / "kube-proxy.log", f"/{CGROUP_PARENT}/host",
        )

    def _client_kubeconfig(self, path: Path, user: str, groups: list[str], file_name: str) -> Path:
        plane = self.control_plane
        pair = plane.client_ca.issue_client_cert(file_name, user, groups, plane.pki_dir / "nodes")
        return write_kubeconfig(
            path, server=plane.server, server_ca_pem=plane.server_ca.cert_pem, user=user,
            client_cert_pem=pair.cert_pem, client_key_pem=pair.key_pem,
        )

    def _managed(self, name: str, argv: list[str], log: Path, cgroup: str) -> ManagedProcess:
        """Start `argv` inside `cgroup` (made in every hierarchy), so a later clean-up finds it
        and every process it spawns (containerd's shims, the containers) by cgroup."""
        directories = _make_cgroup(cgroup)
        script = 'for d in $LM_CGROUPS; do echo $$ > "$d/cgroup.procs"; done; exec "$@"'
        env = {"PATH": f"{self.paths.bin_dir}:{_PATH}", "LM_CGROUPS": " ".join(map(str, directories)),
               "HOME": os.environ.get("HOME", "/root")}
        process = ManagedProcess(name, ["/bin/sh", "-c", script, "sh", *argv], log, env=env)
        process.start()
        return process

    def _start_runtimes(self, paths: NodePaths) -> None:
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.run_dir.mkdir(parents=True, exist_ok=True)
            config = self._write_containerd_config(node, paths)
            node.containerd = self._managed(
                f"containerd[{node.name}]", [*self._own_mounts(node), str(paths.containerd), f"--config={config}"],
                node.logs_dir / "containerd.log", f"{node.cgroup}/runtime",
            )
        for node in self.nodes:
            self._wait_for(node.containerd, lambda n=node: n.containerd_socket.exists(), "containerd's socket")
            self._wait_for(
                node.containerd,
                lambda n=node: subprocess.run(
                    [str(paths.ctr), "--address", str(n.containerd_socket), "version"],
                    capture_output=True, timeout=10,
                ).returncode == 0,
                "containerd's API",
            )
            ctr_import(paths.ctr, node.containerd_socket, paths.pause_image_archive)

    def _own_mounts(self, node: LocalNode) -> list[str]:
        """The command prefix that gives containerd (and so its shims and containers) the node's
        own mount namespace with its host paths; empty without node_host_paths. `slave`
        propagation: the host's mounts still show inside, the node's never leak out, and they
        vanish with the node's processes."""
        if not self.node_host_paths:
            return []
        binds = []
        for path in self.node_host_paths:
            source = node.host_path(path)
            source.mkdir(parents=True, exist_ok=True)
            binds.append(f"mkdir -p {shlex.quote(path)} && mount --bind {shlex.quote(str(source))} {shlex.quote(path)}")
        script = " && ".join(binds) + ' && exec "$@"'
        return ["unshare", "--mount", "--propagation", "slave", "/bin/sh", "-c", script, "sh"]

    def _enter_mounts(self, node: LocalNode) -> list[str]:
        """The kubelet joins its containerd's mount namespace: volumes it mounts must be where
        runc looks for them."""
        if not self.node_host_paths or node.containerd is None or node.containerd.pid is None:
            return []
        return ["nsenter", f"--target={node.containerd.pid}", "--mount", "--"]

    def _write_containerd_config(self, node: LocalNode, paths: NodePaths) -> Path:
        cni_conf_dir = node.workdir / "cni"
        cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (cni_conf_dir / "10-localmodel.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": f"localmodel-{node.name}",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": node.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node.run_dir / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        root = node.containerd_root
        config = node.workdir / "containerd.toml"
        config.write_text(f'''version = 3
root = "{root}"
state = "{node.run_dir / 'state'}"
# Plugins that would write outside this node's directories or need what the machine lacks.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.run_dir / 'containerd.sock.ttrpc'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # This machine kind's root has no CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj: the kubelet's -998 for sandboxes and -997 for Guaranteed Pods become 0.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{paths.runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{paths.cni_bin_dir}"]
    conf_dir = "{cni_conf_dir}"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
''')
        return config

    def _start_kubelets(self, paths: NodePaths) -> None:
        plane = self.control_plane
        for node in self.nodes:
            node.kubelet_port = free_port(HOST_ADDRESS)
            pki = node.workdir / "pki"
            serving = plane.server_ca.issue_serving_cert(f"kubelet-{node.name}", [HOST_ADDRESS, node.name], pki)
            kubeconfig = self._client_kubeconfig(
                node.workdir / "kubeconfig", f"system:node:{node.name}", ["system:nodes"], f"node-{node.name}"
            )
            _make_cgroup(node.cgroup)
            config = node.workdir / "kubelet.yaml"
            config.write_text(json.dumps({
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                # cgroup v1 (this machine kind's hybrid layout) is refused from 1.35 on otherwise.
                "failCgroupV1": False,
                "cgroupDriver": "cgroupfs",
                "cgroupRoot": node.cgroup,
                "address": HOST_ADDRESS,
                "port": node.kubelet_port,
                "readOnlyPort": 0,
                "healthzPort": 0,
                "tlsCertFile": str(serving.cert_file),
                "tlsPrivateKeyFile": str(serving.key_file),
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": True},
                    "x509": {"clientCAFile": str(plane.client_ca.cert_file)},
                },
                "authorization": {"mode": "Webhook"},
                "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
                "podCIDR": node.pod_cidr,
                "podLogsDir": str(node.workdir / "pod-logs"),
                "resolvConf": "/etc/resolv.conf",
                "failSwapOn": False,
                # A test machine's disk is often fuller than a node's: never evict, never
                # delete images (imported ones could not be pulled back).
                "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                                 "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "serializeImagePulls": False,
                "rotateCertificates": False,
                "serverTLSBootstrap": False,
                "nodeStatusUpdateFrequency": "4s",
                "syncFrequency": "10s",
                "fileCheckFrequency": "20s",
                "registerNode": True,
                "shutdownGracePeriod": "0s",
                "localStorageCapacityIsolation": True,
            }, indent=2))
            argv = [
                *self._enter_mounts(node),
                str(paths.kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={node.kubelet_root}",
                f"--hostname-override={node.name}",
                f"--node-ip={HOST_ADDRESS}",
                f"--cert-dir={pki}",
                # Upstream's -999 needs CAP_SYS_RESOURCE, which root lacks on this machine kind.
                "--oom-score-adj=0",
                "--v=1",
            ]
            if self.node_labels:
                argv.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.node_labels.items())))
            node.kubelet = self._managed(
                f"kubelet[{node.name}]", argv, node.logs_dir / "kubelet.log", f"{node.cgroup}/kubelet"
            )

    def _wait_for(self, process: ManagedProcess | None, probe: Any, what: str) -> None:
        assert process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not process.running():
                raise ControlPlaneError(
                    f"{process.name} exited with status {process.exit_code()} before {what} answered; "
                    f"log {process.log_file}:\n{process.log_tail()}"
                )
            try:
                if probe():
                    return
            except (OSError, subprocess.SubprocessError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{what} not ready after {self.start_timeout:.0f}s; log {process.log_file}")
            time.sleep(0.1)


# ---- host state: make and clean ------------------------------------------------------------------


def cleanup_leftovers() -> None:
    """Remove everything a RealNodeCluster leaves on the host, whether it stopped or was killed:
    every process in the /localmodel-nodes cgroups, mounts under the recorded directories and
    /run/localmodel-nodes, the interfaces, the iptables chains of kube-proxy, the kubelet and
    the CNI plugins, the cgroups, and the saved sysctls. Call it only while holding the lock (a
    RealNodeCluster does)."""
    state = _read_state()
    _kill_cgroup_tree(f"/{CGROUP_PARENT}")
    roots = [RUN_DIR, DATA_DIR, *(Path(p) for p in state.get("nodes", []))]
    _unmount_under(roots)
    for link in _links():
        if link == HOST_INTERFACE or link.startswith(BRIDGE_PREFIX):
            _ip("link", "delete", link, check=False)
    _clean_iptables()
    _remove_cgroup_tree(f"/{CGROUP_PARENT}")
    for made in state.get("made_host_paths", []):
        try:
            Path(made).rmdir()  # only while empty: it is a mount point inside the nodes only
        except OSError:
            pass
    for name, value in (state.get("sysctls") or {}).items():
        _write_sysctl(name, value)
    if RUN_DIR.exists():
        for child in RUN_DIR.iterdir():
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
    _STATE_FILE.unlink(missing_ok=True)


def node_data_root(workdir: Path) -> Path:
    """Where the nodes of the cluster in `workdir` keep their data: short (see
    LocalNode.data_dir) and distinct per work directory."""
    return DATA_DIR / hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:10]


def remove_node_data(workdir: Path) -> None:
    """Delete the node data of the (stopped) cluster in `workdir`."""
    root = node_data_root(workdir)
    _unmount_under([root])
    shutil.rmtree(root, ignore_errors=True)


def host_leftovers(directories: Sequence[Path] = ()) -> list[str]:
    """What of a RealNodeCluster is on the host now: links, iptables chains, cgroups, processes
    in them, and mounts under RUN_DIR or `directories`. Empty once a cluster has stopped."""
    found = [f"link {link}" for link in _links() if link == HOST_INTERFACE or link.startswith(BRIDGE_PREFIX)]
    for binary in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            saved = subprocess.run([f"{binary}-save", "-t", table], capture_output=True, text=True)
            found += [f"{binary} {table} chain {line[1:].split()[0]}" for line in saved.stdout.splitlines()
                      if line.startswith(":") and line[1:].startswith(_CHAIN_PREFIXES)]
    for directory in _cgroup_dirs(f"/{CGROUP_PARENT}"):
        found.append(f"cgroup {directory}")
        try:
            found += [f"process {pid} in {directory}" for pid in (directory / "cgroup.procs").read_text().split()]
        except OSError:
            pass
    prefixes = [str(d.resolve()) + "/" for d in (RUN_DIR, *directories)]
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4]
            if any((point + "/").startswith(prefix) for prefix in prefixes):
                found.append(f"mount {point}")
    return found


def _read_state() -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(_STATE_FILE.read_text())
        return loaded
    except (FileNotFoundError, ValueError):
        return {}


def _read_sysctl(name: str) -> str:
    return (Path("/proc/sys") / name).read_text().strip()


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name
    if path.exists():
        path.write_text(value + "\n")


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _links() -> list[str]:
    result = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return [line.split(":", 2)[1].strip().split("@")[0] for line in result.stdout.splitlines() if ":" in line]


def _iptables(*args: str, binary: str = "iptables", check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([binary, "-w", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"{binary} {' '.join(args)} failed: {result.stderr.strip()}")
    return result


#: Chain prefixes only our components make: kube-proxy and the kubelet (KUBE-), the CNI bridge
#: and portmap plugins (CNI-), and ours.
_CHAIN_PREFIXES = ("KUBE-", "CNI-", "LOCALMODEL-")


def _clean_iptables() -> None:
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            saved = subprocess.run([f"{binary}-save", "-t", table], capture_output=True, text=True)
            if saved.returncode != 0:
                continue
            ours = [line[1:].split()[0] for line in saved.stdout.splitlines()
                    if line.startswith(":") and line[1:].startswith(_CHAIN_PREFIXES)]
            builtin = [line[1:].split()[0] for line in saved.stdout.splitlines()
                       if line.startswith(":") and not line[1:].startswith(_CHAIN_PREFIXES)]
            # Jumps into our chains from the built-in chains first, then the chains themselves.
            for line in saved.stdout.splitlines():
                parts = shlex.split(line) if line.startswith("-A ") else []
                if len(parts) > 3 and parts[0] == "-A" and parts[1] in builtin and "-j" in parts:
                    target = parts[parts.index("-j") + 1]
                    if target in ours:
                        _iptables("-t", table, "-D", *parts[1:], binary=binary, check=False)
            for chain in ours:
                _iptables("-t", table, "-F", chain, binary=binary, check=False)
            for chain in ours:
                _iptables("-t", table, "-X", chain, binary=binary, check=False)


def _cgroup_mounts() -> list[Path]:
    """Mount points of the cgroup v1 hierarchies and of the v2 (unified) one."""
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            left, _, right = line.partition(" - ")
            fstype = right.split()[0]
            if fstype in ("cgroup", "cgroup2"):
                mounts.append(Path(left.split()[4]))
    return mounts


def _make_cgroup(path: str) -> list[Path]:
    """Create `path` in every cgroup v1 hierarchy (cpuset's needs its cpus and mems filled in
    from the parent before it can hold a process); returns the directories."""
    made = []
    for mount in _cgroup_mounts():
        if (mount / "cgroup.controllers").exists():
            continue  # the v2 hierarchy of a hybrid layout: the kubelet uses v1 here
        current = mount
        for part in path.strip("/").split("/"):
            parent, current = current, current / part
            if not current.exists():
                current.mkdir()
                for name in ("cpuset.cpus", "cpuset.mems"):
                    if (current / name).exists() and not (current / name).read_text().strip():
                        (current / name).write_text((parent / name).read_text())
        made.append(current)
    return made


def _cgroup_dirs(path: str) -> Iterator[Path]:
    """Every directory of `path`'s tree in every hierarchy, deepest first. The kubelets remove
    Pod cgroups while this walks (a cluster still running): a directory gone meanwhile is skipped."""
    for mount in _cgroup_mounts():
        top = mount / path.strip("/")
        if top.is_dir():
            below = [Path(parent) / name for parent, names, _ in os.walk(top, onerror=lambda error: None)
                     for name in names]
            yield from sorted(below, key=lambda p: -len(p.parts))
            yield top


def _kill_cgroup_tree(path: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        pids = set()
        for directory in _cgroup_dirs(path):
            try:
                pids.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
            except (FileNotFoundError, ValueError):
                continue
        pids.discard(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"processes {sorted(pids)} in cgroup {path} do not die")
        time.sleep(0.1)


def _remove_cgroup_tree(path: str) -> None:
    for directory in _cgroup_dirs(path):
        try:
            directory.rmdir()
        except OSError:
            pass


def _unmount_under(roots: Sequence[Path]) -> None:
    """Lazily unmount every mount point under `roots`, deepest first (overlay rootfs of
    containers, Pod volumes, netns bind mounts, tmpfs of projected tokens)."""
    prefixes = [str(root.resolve()) + "/" for root in roots if str(root) not in ("", "/")]
    for _ in range(5):
        points = []
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                point = line.split()[4].replace("\\040", " ")
                if any((point + "/").startswith(prefix) for prefix in prefixes):
                    points.append(point)
        if not points:
            return
        for point in sorted(set(points), key=lambda p: -p.count("/")):
            subprocess.run(["umount", "-l", point], capture_output=True)


# ---- a small test image ------------------------------------------------------------------------

#: The reference `write_busybox_image` gives its image by default.
BUSYBOX_IMAGE = "localhost/localmodel-busybox:1"


def write_busybox_image(archive: Path, reference: str = BUSYBOX_IMAGE, busybox: Path = Path("/bin/busybox")) -> Path:
    """Write a one-layer OCI archive with a static busybox (Debian's busybox-static) and a link
    for each of its applets in /bin: a shell, wget, nc, sha256sum... for test Pods. Deterministic
    for a given busybox binary."""
    from localmodel.dev.oci import ImageConfig, Layer, write_image

    if not busybox.exists():
        raise ControlPlaneError(f"{busybox} is missing: apt-get install busybox-static")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    with tempfile_directory(archive.parent) as layer:
        (layer / "bin").mkdir()
        shutil.copy2(busybox, layer / "bin" / "busybox")
        for applet in applets:
            if applet != "busybox":
                (layer / "bin" / applet).symlink_to("busybox")
        for directory in ("tmp", "etc", "proc", "sys", "dev"):
            (layer / directory).mkdir()
        (layer / "tmp").chmod(0o1777)
        # Merged-/usr links as on Debian, so a Pod that mounts the host's /usr (hostPath) can run
        # the host's dynamically linked programs, e.g. python3 as a real TLS client in tests.
        (layer / "lib").symlink_to("usr/lib")
        (layer / "lib64").symlink_to("usr/lib64")
        (layer / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
        (layer / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
        write_image(
            archive, [Layer(layer)],
            ImageConfig(cmd=["/bin/sh"], env=["PATH=/bin"]),
            reference, source_date_epoch=int(busybox.stat().st_mtime),
        )
    return archive


@contextmanager
def tempfile_directory(near: Path) -> Iterator[Path]:
    near.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".layer-", dir=near) as scratch:
        yield Path(scratch)
