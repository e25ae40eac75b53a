"""node: the agent that keeps one node's disk equal to its LocalModelNode.

Pure planning (`plan`, `capacity`, `credentials`, `status`, `retry`) is kept apart from the edges
that do I/O: the disk (`layout`), the download engine (`store`, `downloads`), the API server or a
manifest file (`cluster`, `standalone`), and the metrics (`metrics`; served by `kube.ops`).
`reconcile` joins them into one level-triggered pass; `runner` drives passes until SIGTERM.
"""
