"""Shared test setup: server fixtures come from plugin modules under tests/servers/."""

pytest_plugins = [
    "tests.servers.nginx",
    "tests.servers.http",
]
