pytest_plugins = [
    "tests.servers.s3",
    "tests.servers.gcs",
    "tests.servers.azure",
    "tests.servers.hf",
]
