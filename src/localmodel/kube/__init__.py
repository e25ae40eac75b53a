"""kube: thin, shared Kubernetes plumbing for the agent and the controller.

Resource classes for the serving.kserve.io kinds, the client factory, and the
`inferenceservice-config` settings. No reconcile logic lives here.
"""
