"""Shared test setup: server fixtures come from plugin modules under tests/servers/; the
Kubernetes control plane from tests/kube_cluster.py."""

pytest_plugins = [
    "tests.servers.nginx",
    "tests.servers.http",
    "tests.servers.s3",
    "tests.servers.gcs",
    "tests.servers.azure",
    "tests.servers.hf",
    "tests.servers.oci",
    "tests.kube_cluster",
    "tests.real_nodes",
    "tests.image_venv",
]
