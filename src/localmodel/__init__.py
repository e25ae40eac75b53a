"""localmodel: a node-local model cache for Kubernetes, speaking KServe's LocalModelCache API."""

__version__ = "0.1.0"
