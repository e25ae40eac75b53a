"""lightkube resource classes for the kinds localmodel reads and writes."""

from __future__ import annotations

from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from localmodel.api.types import GROUP, VERSION

LocalModelCache = create_global_resource(GROUP, VERSION, "LocalModelCache", "localmodelcaches")
LocalModelNamespaceCache = create_namespaced_resource(
    GROUP, VERSION, "LocalModelNamespaceCache", "localmodelnamespacecaches"
)
LocalModelNodeGroup = create_global_resource(
    GROUP, VERSION, "LocalModelNodeGroup", "localmodelnodegroups"
)
LocalModelNode = create_global_resource(GROUP, VERSION, "LocalModelNode", "localmodelnodes")

# Consumers; their CRDs may be absent (KServe not installed), callers must tolerate a 404.
InferenceService = create_namespaced_resource(
    GROUP, "v1beta1", "InferenceService", "inferenceservices"
)
LLMInferenceService = create_namespaced_resource(
    GROUP, "v1alpha1", "LLMInferenceService", "llminferenceservices"
)
