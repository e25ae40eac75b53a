"""controller: the cluster half of localmodel (`localmodel controller`).

Reconciles LocalModelCache and LocalModelNamespaceCache into LocalModelNode entries, PV/PVCs,
cache status, LocalModelNodeGroup status and cache-aware node labels, and serves the admission
webhooks. Modules named `plan_*`, `admission_*`, `affinity`, `names` and `views` are pure
(no I/O); the rest drive the Kubernetes API.
"""
