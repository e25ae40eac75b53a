"""Real nodes: kubelets and containerd run real Pods, which reach each other, the apiserver
(through the `kubernetes` Service, with the token the kubelet projects) and Services; hostPath
volumes and the workload controllers work. See docs/realnodes.md."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from localmodel.dev.nodes import CLUSTER_CIDR, RealNodeCluster

pytestmark = pytest.mark.realnodes

T = TypeVar("T")


@pytest.fixture
def namespace(real_nodes: RealNodeCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    real_nodes.kubectl("create", "namespace", name)
    yield name
    real_nodes.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: RealNodeCluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def pod(name: str, namespace: str, image: str, command: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never", "command": ["sh", "-c", command],
                **spec.pop("container", {}),
            }],
            **spec,
        },
    }


def wait_ready(cluster: RealNodeCluster, namespace: str, *names: str) -> None:
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", *(f"pod/{n}" for n in names), "--timeout=120s",
                    timeout=150)


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """The first truthy result of `probe`: a container is Ready as soon as it starts, before
    its command has done anything."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f}s"
        time.sleep(0.2)


def file_text(path: Path) -> str | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text if text.endswith("\n") else None


def get(cluster: RealNodeCluster, *args: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(cluster.kubectl("get", "-o", "json", *args).stdout)
    return loaded


def test_two_nodes_are_ready_with_their_own_names_and_pod_cidrs(real_nodes: RealNodeCluster) -> None:
    nodes = {item["metadata"]["name"]: item for item in get(real_nodes, "nodes")["items"]}

    assert sorted(nodes) == ["node-1", "node-2"]
    cidrs = [ipaddress.ip_network(nodes[name]["spec"]["podCIDR"]) for name in sorted(nodes)]
    assert cidrs[0] != cidrs[1] and not cidrs[0].overlaps(cidrs[1])
    assert all(cidr.subnet_of(ipaddress.ip_network(CLUSTER_CIDR)) for cidr in cidrs)
    server_version = json.loads(real_nodes.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    for item in nodes.values():
        conditions = {c["type"]: c["status"] for c in item["status"]["conditions"]}
        assert conditions["Ready"] == "True"
        assert item["status"]["nodeInfo"]["kubeletVersion"] == server_version
        assert item["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    ports = {item["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] for item in nodes.values()}
    assert len(ports) == 2


def test_a_pod_runs_on_each_node_and_writes_its_hostpath(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str, tmp_path: Path
) -> None:
    for node in real_nodes.nodes:
        host_dir = tmp_path / node.name / "data"  # does not exist yet: DirectoryOrCreate makes it
        apply(real_nodes, pod(
            f"writer-{node.name}", namespace, busybox_image,
            f"echo written-on-{node.name} > /data/proof && sleep 3600",
            nodeName=node.name,
            volumes=[{"name": "data", "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"}}],
            container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        ))
    wait_ready(real_nodes, namespace, *(f"writer-{node.name}" for node in real_nodes.nodes))

    for node in real_nodes.nodes:
        status = get(real_nodes, "-n", namespace, f"pod/writer-{node.name}")["status"]
        assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(node.pod_cidr)
        proof = tmp_path / node.name / "data" / "proof"
        assert eventually(lambda: file_text(proof), f"{proof} written") == f"written-on-{node.name}\n"


def test_pods_on_different_nodes_reach_each_other_directly_and_through_a_service(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str
) -> None:
    apply(
        real_nodes,
        pod("server", namespace, busybox_image,
            "mkdir -p /www && echo hello-from-node-2 > /www/index.html && httpd -f -p 8080 -h /www",
            nodeName="node-2", container={"readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}),
        pod("client", namespace, busybox_image, "sleep 3600", nodeName="node-1"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": namespace},
         "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    )
    wait_ready(real_nodes, namespace, "server", "client")
    server_ip = get(real_nodes, "-n", namespace, "pod/server")["status"]["podIP"]
    cluster_ip = get(real_nodes, "-n", namespace, "service/server")["spec"]["clusterIP"]

    # (`timeout`, not wget's -T: Debian's static busybox wget crashes with -T.)
    direct = real_nodes.kubectl("exec", "-n", namespace, "client", "--",
                                "timeout", "10", "wget", "-q", "-O-", f"http://{server_ip}:8080/")
    assert direct.stdout == "hello-from-node-2\n"
    # kube-proxy programs the ClusterIP once the EndpointSlice exists: allow it a few tries.
    via_service = real_nodes.kubectl(
        "exec", "-n", namespace, "client", "--", "sh", "-c",
        f"for i in $(seq 30); do timeout 2 wget -q -O- http://{cluster_ip}/ && exit 0; sleep 1; done; exit 1",
    )
    assert via_service.stdout == "hello-from-node-2\n"
    # The host's own connections take the same path as the apiserver's calls to webhook
    # Services: ClusterIP, rewritten by kube-proxy's OUTPUT rules to the Pod on node-2.
    with urllib.request.urlopen(f"http://{cluster_ip}/", timeout=10) as response:
        assert response.read() == b"hello-from-node-2\n"


_WHO_AM_I = textwrap.dedent("""
    import json, os, ssl, urllib.request
    secrets = "/var/run/secrets/kubernetes.io/serviceaccount"
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    context = ssl.create_default_context(cafile=f"{secrets}/ca.crt")
    token = open(f"{secrets}/token").read()
    request = urllib.request.Request(
        f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
        data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    review = json.load(urllib.request.urlopen(request, context=context, timeout=20))
    print(json.dumps({"host": host, "user": review["status"]["userInfo"]}))
""")


def test_a_pod_reaches_the_apiserver_through_the_kubernetes_service_with_its_projected_token(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str
) -> None:
    # The busybox image has no TLS client the apiserver accepts: the Pod runs the host's python3
    # from a read-only hostPath /usr (the image links /lib to usr/lib as Debian does).
    apply(real_nodes, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "whoami", "namespace": namespace},
                       "data": {"whoami.py": _WHO_AM_I}})
    apply(real_nodes, pod(
        "whoami", namespace, busybox_image, "PATH=/usr/bin:/bin python3 /script/whoami.py && sleep 3600",
        nodeName="node-2",
        volumes=[{"name": "usr", "hostPath": {"path": "/usr", "type": "Directory"}},
                 {"name": "script", "configMap": {"name": "whoami"}}],
        container={"volumeMounts": [{"name": "usr", "mountPath": "/usr", "readOnly": True},
                                    {"name": "script", "mountPath": "/script"}]},
    ))
    wait_ready(real_nodes, namespace, "whoami")

    logs = eventually(lambda: real_nodes.kubectl("logs", "-n", namespace, "whoami").stdout, "whoami's output")
    output = json.loads(logs)
    assert output["host"] == "10.96.0.1"  # the kubernetes Service's ClusterIP, not the apiserver's own address
    user = output["user"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    # A bound token the kubelet requested for this Pod on this node.
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["whoami"]
    assert user["extra"]["authentication.kubernetes.io/node-name"] == ["node-2"]


def test_a_deployment_and_a_daemonset_roll_out(real_nodes: RealNodeCluster, busybox_image: str, namespace: str) -> None:
    template = {
        "metadata": {"labels": {"app": "sleeper"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "main", "image": busybox_image, "imagePullPolicy": "Never", "command": ["sleep", "3600"]}]},
    }
    apply(
        real_nodes,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sleeper", "namespace": namespace},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "sleeper"}}, "template": template}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "everywhere", "namespace": namespace},
         "spec": {"selector": {"matchLabels": {"app": "everywhere"}},
                  "template": {**template, "metadata": {"labels": {"app": "everywhere"}}}}},
    )
    for workload in ("deployment/sleeper", "daemonset/everywhere"):
        real_nodes.kubectl("rollout", "status", "-n", namespace, workload, "--timeout=120s", timeout=150)

    daemon_pods = get(real_nodes, "-n", namespace, "pods", "-l", "app=everywhere")["items"]
    assert sorted(p["spec"]["nodeName"] for p in daemon_pods) == ["node-1", "node-2"]
    assert all(p["status"]["phase"] == "Running" for p in daemon_pods)
    deployment = get(real_nodes, "-n", namespace, "deployment/sleeper")
    assert deployment["status"]["readyReplicas"] == 3


def test_a_restricted_pod_runs_as_the_agent_does_with_its_probe_and_memory_limit(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str
) -> None:
    # The agent DaemonSet's security settings (deploy/agent/daemonset.yaml): UID 1000, read-only
    # root, no capabilities, RuntimeDefault seccomp; a kubelet httpGet probe; a 300Mi limit.
    restricted = {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
        "readOnlyRootFilesystem": True, "runAsNonRoot": True,
    }
    apply(real_nodes, pod(
        "restricted", namespace, busybox_image,
        "mkdir -p /tmp/www && echo ok > /tmp/www/healthz && httpd -f -p 8081 -h /tmp/www",
        nodeName="node-1",
        securityContext={"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
                         "seccompProfile": {"type": "RuntimeDefault"}},
        volumes=[{"name": "tmp", "emptyDir": {}}],
        container={
            "securityContext": restricted,
            "resources": {"requests": {"cpu": "10m", "memory": "100Mi"}, "limits": {"memory": "300Mi"}},
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8081}, "periodSeconds": 1},
        },
    ))
    wait_ready(real_nodes, namespace, "restricted")

    def run(command: str) -> str:
        return real_nodes.kubectl("exec", "-n", namespace, "restricted", "--", "sh", "-c", command).stdout

    assert run("id -u; id -g").split() == ["1000", "1000"]
    assert run("touch /not-writable 2>/dev/null && echo wrote || echo refused").strip() == "refused"
    assert run("grep CapEff /proc/self/status").split()[1] == "0000000000000000"
    assert run("grep Seccomp: /proc/self/status").split()[1] == "2"  # filter mode
    uid = get(real_nodes, "-n", namespace, "pod/restricted")["metadata"]["uid"]
    pod_cgroup = real_nodes.node("node-1").pod_cgroup(uid, "memory")
    assert int((pod_cgroup / "memory.limit_in_bytes").read_text()) == 300 * 1024 * 1024
    assert int((pod_cgroup / "memory.usage_in_bytes").read_text()) > 0


def test_each_node_has_its_own_models_host_path(real_nodes: RealNodeCluster, busybox_image: str, namespace: str) -> None:
    for node in real_nodes.nodes:
        apply(real_nodes, pod(
            f"models-{node.name}", namespace, busybox_image,
            f"echo {node.name} > /mnt/models/owner && cat /proc/self/mountinfo > /mnt/models/.mountinfo "
            "&& mv /mnt/models/.mountinfo /mnt/models/mountinfo && sleep 3600",
            nodeName=node.name,
            volumes=[{"name": "models", "hostPath": {"path": "/models", "type": "DirectoryOrCreate"}}],
            container={"volumeMounts": [{"name": "models", "mountPath": "/mnt/models"}]},
        ))
    wait_ready(real_nodes, namespace, *(f"models-{node.name}" for node in real_nodes.nodes))

    for node in real_nodes.nodes:
        owner = node.host_path("/models") / "owner"
        assert eventually(lambda: file_text(owner), f"{owner} written") == f"{node.name}\n"
        mountinfo = node.host_path("/models") / "mountinfo"
        mounts = [line.split() for line in eventually(lambda: file_text(mountinfo), "mountinfo").splitlines()]
        assert any(fields[4] == "/mnt/models" for fields in mounts)
    assert not Path("/models/owner").exists()  # the host's own /models is untouched


_WEBHOOK = textwrap.dedent("""
    import http.server, json, os, ssl
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            request = review["request"]
            denied = request["object"]["metadata"].get("labels", {}).get("deny") == "yes"
            body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": request["uid"], "allowed": not denied,
                "status": {"message": "denied by the webhook Pod on " + os.environ["NODE_NAME"]}}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
    server = http.server.HTTPServer(("", 8443), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
""")


def test_the_apiserver_calls_a_webhook_served_by_a_pod_through_its_service(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str, tmp_path: Path
) -> None:
    plane = real_nodes.control_plane
    pair = plane.server_ca.issue_serving_cert("webhook", [f"webhook.{namespace}.svc"], tmp_path)
    real_nodes.kubectl("create", "secret", "tls", "webhook-tls", "-n", namespace,
                       f"--cert={pair.cert_file}", f"--key={pair.key_file}")
    apply(
        real_nodes,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "webhook", "namespace": namespace},
         "data": {"webhook.py": _WEBHOOK}},
        pod("webhook", namespace, busybox_image, "PATH=/usr/bin:/bin exec python3 /script/webhook.py",
            nodeName="node-2",
            volumes=[{"name": "usr", "hostPath": {"path": "/usr", "type": "Directory"}},
                     {"name": "script", "configMap": {"name": "webhook"}},
                     {"name": "tls", "secret": {"secretName": "webhook-tls"}}],
            container={
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "volumeMounts": [{"name": "usr", "mountPath": "/usr", "readOnly": True},
                                 {"name": "script", "mountPath": "/script"},
                                 {"name": "tls", "mountPath": "/tls"}],
                "readinessProbe": {"tcpSocket": {"port": 8443}, "periodSeconds": 1},
            }),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webhook", "namespace": namespace},
         "spec": {"selector": {"app": "webhook"}, "ports": [{"port": 443, "targetPort": 8443}]}},
    )
    wait_ready(real_nodes, namespace, "webhook")
    apply(real_nodes, {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": f"deny-{namespace}"},
        "webhooks": [{
            "name": "deny.localmodel.test", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail", "timeoutSeconds": 5,
            "clientConfig": {"service": {"name": "webhook", "namespace": namespace, "port": 443},
                             "caBundle": base64.b64encode(plane.server_ca.cert_pem).decode()},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
        }],
    })
    try:
        # Until kube-proxy has programmed the new Service, the call fails (failurePolicy Fail).
        deadline = time.monotonic() + 60
        while True:
            allowed = real_nodes.kubectl("create", "configmap", "-n", namespace, f"c{int(time.monotonic() * 1000)}",
                                         "--from-literal=a=b", "--dry-run=server", "-o", "name", check=False)
            if allowed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert allowed.returncode == 0, allowed.stderr
        denied = real_nodes.kubectl("apply", "-f", "-", check=False, input=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "denied", "namespace": namespace, "labels": {"deny": "yes"}}}))
        assert denied.returncode != 0
        assert "denied by the webhook Pod on node-2" in denied.stderr
    finally:
        real_nodes.kubectl("delete", "validatingwebhookconfiguration", f"deny-{namespace}", check=False)


def test_a_pod_reaches_a_host_server_on_loopback_through_expose_to_pods(
    real_nodes: RealNodeCluster, busybox_image: str, namespace: str
) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"from-the-host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = real_nodes.expose_to_pods(server.server_address[1])
        apply(real_nodes, pod("fetcher", namespace, busybox_image, "sleep 3600", nodeName="node-2"))
        wait_ready(real_nodes, namespace, "fetcher")
        fetched = real_nodes.kubectl("exec", "-n", namespace, "fetcher", "--",
                                     "timeout", "10", "wget", "-q", "-O-", f"http://{host}:{port}/")
        assert fetched.stdout == "from-the-host\n"
    finally:
        server.shutdown()
        server.server_close()
