"""pytest plugin: one cluster with real nodes per test session, for tests marked `realnodes`.

Fixtures (session scope):
    real_nodes      a started localmodel.dev.nodes.RealNodeCluster: two real nodes, node-1 and
                    node-2 (kubelet + containerd each), kube-scheduler, kube-proxy and the
                    workload controllers; real_nodes.kubectl(...) runs kubectl as admin,
                    real_nodes.import_image(archive) loads an OCI archive into every node;
                    each node has its own /models (NODE_HOST_PATHS), seen from the host at
                    real_nodes.node("node-1").host_path("/models")
    busybox_image   the reference of a small static-busybox image, imported into every node
    localmodel_image
                    the product image built from Debian packages (`product_image` of
                    tests/image_venv.py), imported into every node; its reference
    pod_reachable_s3
                    `rclone serve s3` on the nodes' host address (10.244.0.1), which Pods reach

The node binaries are built when collection finishes and a selected test needs `real_nodes`,
outside any test's timeout; CI builds them up front (`python -m localmodel.dev.nodebuild`).
The time the cluster took to start is printed in the terminal summary.

Real nodes need root, and one such cluster runs on a machine at a time (they share the host's
network namespace and cgroups): a second session waits for the first.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from localmodel.dev.nodebuild import built_node_paths, ensure_node_built
from localmodel.dev.nodes import BUSYBOX_IMAGE, HOST_ADDRESS, RealNodeCluster, write_busybox_image
from localmodel.dev.oci import WrittenImage
from tests.servers.s3 import RcloneS3Server, serve_rclone

#: (node count, timings of the session's first start) for the terminal summary.
#: Host paths each node has for itself: the agent's hostPath (deploy/agent/daemonset.yaml).
NODE_HOST_PATHS = ("/models",)

_started: list[tuple[int, dict[str, float]]] = []
#: (method, timings) of each product installation (localmodel.dev.product), for the summary.
_installs: list[tuple[str, dict[str, float]]] = []


def record_install(method: str, timings: dict[str, float]) -> None:
    _installs.append((method, dict(timings)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "realnodes: runs Pods on real kubelets and containerd (tests/realnodes; needs root)"
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    if not any("real_nodes" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    if built_node_paths() is None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("building the node binaries from Go modules (once; minutes when cold)...")
    ensure_node_built()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for count, timings in _started:
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items() if name != "total")
        terminalreporter.write_line(f"real nodes: {count} nodes Ready in {timings.get('total', 0):.1f}s ({phases})")
    for method, timings in _installs:
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in timings.items() if name != "total")
        terminalreporter.write_line(f"product installed ({method}) in {timings.get('total', 0):.1f}s ({phases})")


@pytest.fixture(scope="session")
def real_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    cluster = RealNodeCluster(tmp_path_factory.mktemp("realnodes"), nodes=2, node_host_paths=NODE_HOST_PATHS)
    with cluster:
        _started.append((len(cluster.nodes), dict(cluster.timings)))
        yield cluster
    cluster.remove_data()


@pytest.fixture(scope="session")
def busybox_image(real_nodes: RealNodeCluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    archive = write_busybox_image(tmp_path_factory.mktemp("images") / "busybox.tar")
    real_nodes.import_image(archive)
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def localmodel_image(real_nodes: RealNodeCluster, product_image: WrittenImage) -> str:
    real_nodes.import_image(product_image.archive)
    return product_image.reference


@pytest.fixture(scope="session")
def pod_reachable_s3(real_nodes: RealNodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    with serve_rclone(tmp_path_factory.mktemp("pod-s3"), host=HOST_ADDRESS) as server:
        yield server
