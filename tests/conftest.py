"""Shared pytest setup: fixture plugins, one module per kind of server."""

pytest_plugins = ["tests.kube_cluster"]
