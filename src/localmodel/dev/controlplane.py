"""A real Kubernetes control plane on 127.0.0.1 for tests and the local demo.

etcd, kube-apiserver and (optionally) kube-controller-manager, built from Go modules by
`localmodel.dev.build`, run as child processes in one working directory:

    DIR/kubeconfig               admin credential (client cert, O=system:masters)
    DIR/kubeconfigs/*.yaml       extra credentials made by kubeconfig_for_user / _for_token
    DIR/pki/                     serving CA, client CA, service-account signing key, certs
    DIR/etcd/                    etcd data (kept across restarts of the same DIR)
    DIR/logs/<component>.log     each component's output
    DIR/ports.json               ports chosen on first start, reused while they are free

The apiserver runs with RBAC and Node authorization, the ValidatingAdmissionPolicy and webhook
admission plugins, NodeRestriction, and a service-account issuer, so TokenRequest issues bound
tokens (which carry `authentication.kubernetes.io/node-name` when bound to a Pod with a nodeName).
No kubelet runs: Nodes and Pods are plain objects.

    with ControlPlane(tmp_dir) as cluster:
        cluster.kubectl("get", "ns")
        cluster.stop_apiserver(); ...; cluster.start_apiserver()

`python -m localmodel.dev.controlplane build` builds the binaries up front (CI does this so the
build time shows on its own).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import random
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from localmodel.dev.build import Paths, ensure_built
from localmodel.dev.kubeconfig import write_kubeconfig
from localmodel.dev.pki import CertificateAuthority, ensure_service_account_key
from localmodel.dev.process import ManagedProcess
from localmodel.errors import ControlPlaneError

__all__ = ["ControlPlane", "DEFAULT_CONTROLLERS", "Paths", "ensure_built"]

#: kube-controller-manager controllers worth having without kubelets: default ServiceAccounts
#: (Pod admission needs them), namespace deletion, owner-reference garbage collection, the
#: kube-root-ca.crt ConfigMap, and ValidatingAdmissionPolicy type-checking status.
DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "serviceaccount-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "validatingadmissionpolicy-status-controller",
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "localmodel-admin"

_Probe = Callable[[], bool]


class ControlPlane:
    """etcd + kube-apiserver (+ kube-controller-manager) in `workdir`. A context manager.

    `controllers`: the kube-controller-manager controllers to run; empty runs no controller
    manager. `etcd_fsync=False` skips fsync in etcd: data survives process restarts but not a
    machine crash, and tests run much faster. `bind_address`: where the apiserver listens and
    what it advertises; real nodes (localmodel.dev.nodes) give an address Pods can reach, and the
    `kubernetes` Service then has that address as its endpoint.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        paths: Paths | None = None,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        apiserver_args: Sequence[str] = (),
        etcd_fsync: bool = False,
        bind_address: str = "127.0.0.1",
        start_timeout: float = 180.0,
        stop_timeout: float = 20.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self._paths = paths
        self.controllers = tuple(controllers)
        self.apiserver_args = tuple(apiserver_args)
        self.etcd_fsync = etcd_fsync
        self.bind_address = bind_address
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout

        self.pki_dir = self.workdir / "pki"
        self.logs_dir = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self._kubeconfigs_dir = self.workdir / "kubeconfigs"
        self._ports: dict[str, int] = {}
        self._server_ca: CertificateAuthority | None = None
        self._client_ca: CertificateAuthority | None = None
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._controller_manager: ManagedProcess | None = None

    # ---- paths and credentials other code needs ---------------------------------------------

    @property
    def paths(self) -> Paths:
        """The binaries (built on first use)."""
        if self._paths is None:
            self._paths = ensure_built()
        return self._paths

    @property
    def apiserver_port(self) -> int:
        return self._port("apiserver")

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. https://127.0.0.1:43121."""
        return f"https://{self.bind_address}:{self.apiserver_port}"

    @property
    def server_ca(self) -> CertificateAuthority:
        """The CA that signed the apiserver's serving certificate. Tests sign local webhook
        servers' certificates with it (`issue_serving_cert`) and pass its PEM as `caBundle`."""
        if self._server_ca is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._server_ca

    @property
    def client_ca(self) -> CertificateAuthority:
        """The CA the apiserver trusts for client certificates (CN = user, O = groups)."""
        if self._client_ca is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._client_ca

    @property
    def server_ca_file(self) -> Path:
        """PEM of the CA that signed the apiserver's serving certificate."""
        return self.server_ca.cert_file

    @property
    def service_account_issuer(self) -> str:
        return SERVICE_ACCOUNT_ISSUER

    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = (), path: Path | None = None) -> Path:
        """A kubeconfig that authenticates as `user` in `groups` with a client certificate.

        No RBAC binding is made: what the user may do is up to the caller.
        """
        safe = _file_safe(user)
        pair = self.client_ca.issue_client_cert(f"user-{safe}", user, groups, self.pki_dir / "users")
        return write_kubeconfig(
            path or self._kubeconfigs_dir / f"user-{safe}.yaml",
            server=self.server,
            server_ca_pem=self.server_ca.cert_pem,
            user=user,
            client_cert_pem=pair.cert_pem,
            client_key_pem=pair.key_pem,
        )

    def kubeconfig_for_token(self, token: str, path: Path | None = None) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. from TokenRequest)."""
        name = "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        return write_kubeconfig(
            path or self._kubeconfigs_dir / f"{name}.yaml",
            server=self.server,
            server_ca_pem=self.server_ca.cert_pem,
            user=name,
            token=token,
        )

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the matching kubectl against this cluster (admin unless `kubeconfig` is given)."""
        command = [str(self.paths.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {' '.join(args)} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        return result

    # ---- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start everything and return once the apiserver's /readyz answers ok."""
        paths = self.paths
        # A caller that never reaches stop() (an unhandled error, sys.exit) must not leave
        # etcd and the apiserver running: stop them when the interpreter exits.
        atexit.register(self.stop)
        self._prepare_pki()
        self._choose_ports()
        try:
            self._etcd = ManagedProcess("etcd", self._etcd_argv(paths), self.logs_dir / "etcd.log")
            self._etcd.start()
            self._wait_etcd_healthy()
            self._apiserver = ManagedProcess(
                "kube-apiserver", self._apiserver_argv(paths), self.logs_dir / "kube-apiserver.log"
            )
            self.start_apiserver()
            self.write_admin_kubeconfig()
            if self.controllers:
                self._controller_manager = ManagedProcess(
                    "kube-controller-manager",
                    self._controller_manager_argv(paths),
                    self.logs_dir / "kube-controller-manager.log",
                )
                self._controller_manager.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every component (controller manager, apiserver, then etcd). Idempotent."""
        for process in (self._controller_manager, self._apiserver, self._etcd):
            if process is not None:
                process.stop(self.stop_timeout)
        atexit.unregister(self.stop)

    def stop_apiserver(self, grace: float = 5.0) -> None:
        """Stop only the apiserver; etcd, data, ports and credentials stay for start_apiserver().

        It stops listening as soon as it gets SIGTERM, then drains open connections for up to
        its request timeout (60 s) while watchers such as the controller manager hold them.
        An outage does not need that drain: after `grace` seconds it gets SIGKILL (0 = at once,
        like a crash).
        """
        self._require(self._apiserver).stop(grace)

    def start_apiserver(self) -> None:
        """(Re)start the apiserver on the same port and wait until it is ready."""
        apiserver = self._require(self._apiserver)
        apiserver.start()
        self._wait_apiserver_ready(apiserver)

    def apiserver_running(self) -> bool:
        return self._apiserver is not None and self._apiserver.running()

    @property
    def pids(self) -> dict[str, int]:
        """PIDs of the running components by name (etcd, kube-apiserver, ...), e.g. to read their
        CPU time and memory from /proc."""
        running = (self._etcd, self._apiserver, self._controller_manager)
        return {p.name: p.pid for p in running if p is not None and p.pid is not None and p.running()}

    def failed_component(self) -> ManagedProcess | None:
        """A component that has exited on its own, if any (for long-running foreground use)."""
        for process in (self._etcd, self._apiserver, self._controller_manager):
            if process is not None and process.pid is not None and not process.running():
                return process
        return None

    def write_admin_kubeconfig(self) -> Path:
        return write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            server_ca_pem=self.server_ca.cert_pem,
            user=ADMIN_USER,
            client_cert_pem=self._admin.cert_pem,
            client_key_pem=self._admin.key_pem,
        )

    # ---- internals ----------------------------------------------------------------------------

    def _prepare_pki(self) -> None:
        self._server_ca = CertificateAuthority(self.pki_dir, "server-ca", "localmodel-server-ca")
        self._client_ca = CertificateAuthority(self.pki_dir, "client-ca", "localmodel-client-ca")
        self._service_account_key = ensure_service_account_key(self.pki_dir)
        # Reissued on every start: cheap, and never stale after the CA files were replaced.
        self._serving = self.server_ca.issue_serving_cert(
            "kube-apiserver",
            ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local", "10.96.0.1", *self._extra_hosts()],
        )
        self._admin = self.client_ca.issue_client_cert("admin", ADMIN_USER, ["system:masters"])
        # The apiserver's credential towards kubelets (logs, exec, port-forward), when real nodes
        # run; kubelets trust the client CA and authorize it by SubjectAccessReview.
        self._kubelet_client = self.client_ca.issue_client_cert(
            "kube-apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"]
        )
        # The controller manager is an admin too: the garbage collector must read every resource.
        self._controller_manager_pair = self.client_ca.issue_client_cert(
            "kube-controller-manager", "system:kube-controller-manager", ["system:masters"]
        )

    def _extra_hosts(self) -> list[str]:
        return [] if self.bind_address in ("127.0.0.1", "localhost") else [self.bind_address]

    def _choose_ports(self) -> None:
        saved_file = self.workdir / "ports.json"
        saved: dict[str, int] = {}
        if saved_file.exists():
            saved = json.loads(saved_file.read_text())
        ports: dict[str, int] = {}
        for name in ("etcd-client", "etcd-peer", "apiserver"):
            # Reusing the same ports keeps an existing kubeconfig valid across restarts of a DIR.
            previous = saved.get(name)
            host = self.bind_address if name == "apiserver" else "127.0.0.1"
            ports[name] = previous if previous and _port_is_free(previous, host) else free_port(host)
        self._ports = ports
        self.workdir.mkdir(parents=True, exist_ok=True)
        saved_file.write_text(json.dumps(ports, indent=2) + "\n")

    def _port(self, name: str) -> int:
        if name not in self._ports:
            raise ControlPlaneError("the control plane has not been started")
        return self._ports[name]

    def _etcd_argv(self, paths: Paths) -> list[str]:
        client = f"http://127.0.0.1:{self._port('etcd-client')}"
        peer = f"http://127.0.0.1:{self._port('etcd-peer')}"
        argv = [
            str(paths.etcd),
            "--name=localmodel",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=localmodel={peer}",
            "--log-level=warn",
        ]
        if not self.etcd_fsync:
            argv.append("--unsafe-no-fsync")
        return argv

    def _apiserver_argv(self, paths: Paths) -> list[str]:
        pki = self.pki_dir
        loopback = not self._extra_hosts()
        return [
            str(paths.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self._port('etcd-client')}",
            f"--bind-address={self.bind_address}",
            f"--advertise-address={'127.0.0.1' if loopback else self.bind_address}",
            f"--secure-port={self._port('apiserver')}",
            f"--tls-cert-file={self._serving.cert_file}",
            f"--tls-private-key-file={self._serving.key_file}",
            f"--client-ca-file={self.client_ca.cert_file}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self._service_account_key.cert_file}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            # Loopback is not a valid Endpoints address: without this the apiserver logs an
            # error every few seconds trying to publish itself in the `kubernetes` Service. A
            # routable bind address is published, so Pods reach the apiserver by that Service.
            f"--endpoint-reconciler-type={'none' if loopback else 'lease'}",
            f"--kubelet-client-certificate={self._kubelet_client.cert_file}",
            f"--kubelet-client-key={self._kubelet_client.key_file}",
            # Kubelets of localmodel.dev.nodes serve with certificates from the serving CA.
            f"--kubelet-certificate-authority={self.server_ca.cert_file}",
            "--allow-privileged=true",
            "--profiling=false",
            f"--cert-dir={pki / 'generated'}",
            *self.apiserver_args,
        ]

    def _controller_manager_argv(self, paths: Paths) -> list[str]:
        kubeconfig = write_kubeconfig(
            self._kubeconfigs_dir / "kube-controller-manager.yaml",
            server=self.server,
            server_ca_pem=self.server_ca.cert_pem,
            user="system:kube-controller-manager",
            client_cert_pem=self._controller_manager_pair.cert_pem,
            client_key_pem=self._controller_manager_pair.key_pem,
        )
        return [
            str(paths.kube_controller_manager),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={','.join(self.controllers)}",
            f"--root-ca-file={self.server_ca.cert_file}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            # No health/metrics endpoint: nothing scrapes it, and it would need another port.
            "--secure-port=0",
        ]

    def _wait_etcd_healthy(self) -> None:
        etcd = self._require(self._etcd)
        url = f"http://127.0.0.1:{self._port('etcd-client')}/health"

        def healthy() -> bool:
            with urllib.request.urlopen(url, timeout=5) as response:
                return bool(json.load(response).get("health") == "true")

        self._wait(etcd, healthy, "etcd /health")

    def _wait_apiserver_ready(self, apiserver: ManagedProcess) -> None:
        context = ssl.create_default_context(cafile=str(self.server_ca.cert_file))
        context.load_cert_chain(str(self._admin.cert_file), str(self._admin.key_file))
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))

        def ready() -> bool:
            with opener.open(f"{self.server}/readyz", timeout=5) as response:
                return bool(response.status == 200)

        self._wait(apiserver, ready, "kube-apiserver /readyz")

    def _wait(self, process: ManagedProcess, probe: _Probe, what: str) -> None:
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
            except (OSError, urllib.error.URLError, ValueError):
                pass  # not listening yet, or not ready (readyz answers 500 until it is)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not ready after {self.start_timeout:.0f}s; log {process.log_file}:\n"
                    f"{process.log_tail()}"
                )
            time.sleep(0.2)

    @staticmethod
    def _require(process: ManagedProcess | None) -> ManagedProcess:
        if process is None:
            raise ControlPlaneError("the control plane has not been started")
        return process




def free_port(host: str = "127.0.0.1") -> int:
    """A port to hand to a process that binds it later. Chosen below the kernel's ephemeral
    range: a port from that range (what binding port 0 gives) can be taken meanwhile by any
    outgoing connection's local end, and was (an agent's health port, "address already in
    use", with many agents connecting at once), and below Kubernetes' NodePort range
    (30000-32767), which kube-proxy on the real nodes may hold."""
    high = min(_ephemeral_low(), 30000)
    for _ in range(64):
        port = random.randrange(10000, high) if high > 10000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _file_safe(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def _main(argv: Sequence[str]) -> int:
    """`python -m localmodel.dev.controlplane build`: build the binaries, print where they are."""
    if list(argv) != ["build"]:
        print("usage: python -m localmodel.dev.controlplane build", file=sys.stderr)
        return 2
    started = time.monotonic()
    paths = ensure_built()
    print(f"control plane binaries in {paths.bin_dir} ({time.monotonic() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
