"""Shared test setup: server fixtures come from plugin modules under tests/servers/."""

pytest_plugins = [
    "tests.servers.nginx",
    "tests.servers.http",
    "tests.servers.s3",
    "tests.servers.gcs",
    "tests.servers.azure",
    "tests.servers.hf",
]
