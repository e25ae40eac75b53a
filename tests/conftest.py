"""Shared pytest setup: fixture plugins, one module per kind of server."""

pytest_plugins = [
    "tests.servers.nginx",
    "tests.servers.http",
    "tests.kube_cluster",
]
