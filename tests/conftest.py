pytest_plugins = ["tests.servers.s3", "tests.servers.hf", "tests.servers.gcs", "tests.servers.azure"]
