"""kube: the one Kubernetes runtime the agent and the controller share.

Resource classes for the serving.kserve.io kinds, the client factory, the
`inferenceservice-config` settings, merge patches, Leases (`lease`: leader election and origin
slots), Events (`events`), and the health and metrics endpoints (`ops`). No reconcile logic
lives here, and nothing here imports the programs built on it.
"""
