"""api: the serving.kserve.io/v1alpha1 types, storage keys, URI matching and CRD generation.

Pure data and pure functions: no I/O, no Kubernetes client.
"""
