pytest_plugins = ["tests.servers.s3"]
