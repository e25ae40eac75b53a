{{/*
Shared names and snippets. Object names are KServe's (fixed, not prefixed with the release
name): only one localmodel can run per cluster, as with KServe's own components.
*/}}

{{/* The namespace of the controller and the agent. */}}
{{- define "localmodel.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* Labels on every object (not on Pod templates: those stay stable across chart upgrades). */}}
{{- define "localmodel.labels" -}}
app.kubernetes.io/part-of: localmodel
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The one image of agent and controller. */}}
{{- define "localmodel.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "localmodel.agent.name" -}}kserve-localmodelnode-agent{{- end -}}
{{- define "localmodel.controller.name" -}}kserve-localmodel-controller-manager{{- end -}}
{{- define "localmodel.webhook.serviceName" -}}localmodel-webhook-server-service{{- end -}}

{{/* The container securityContext both workloads share: nothing but the process itself. */}}
{{- define "localmodel.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
{{- end -}}

{{/*
Port flags, only when a port differs from the program's default (8080 metrics, 8081 health,
9443 webhook), so the default command line is the kustomize base's.
*/}}
{{/*
Peer-to-peer flags of the agent, only where they differ from the agent's defaults (so the
default render equals the kustomize base).
*/}}
{{- define "localmodel.peerArgs" -}}
{{- if ne (int .originSlots) 1 }}
- --origin-slots={{ .originSlots }}
{{- end }}
{{- if ne (toString .rateLimit) "1Gi" }}
- --peer-rate-limit={{ .rateLimit }}
{{- end }}
{{- if not .enabled }}
- --peer-port=-1
{{- end }}
{{- end -}}

{{- define "localmodel.portArgs" -}}
{{- $defaults := dict "metrics" 8080 "health" 8081 "webhook" 9443 "peer" 8082 -}}
{{- range $name := list "metrics" "health" "webhook" "peer" }}
{{- if and (hasKey $ $name) (ne (int (get $ $name)) (int (get $defaults $name))) }}
- --{{ $name }}-port={{ get $ $name }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Serving certificate for source=helm: generated once, then read back from the cluster on
upgrades (`lookup`) so the CA in the webhook configurations stays the one that signed it.
Rendered as YAML {ca, crt, key}, base64 each; memoised so the Secret and the webhook
configurations of one render agree.
*/}}
{{- define "localmodel.webhook.tls" -}}
{{- if not (hasKey .Values "_webhookTLS") -}}
{{- $ns := include "localmodel.namespace" . -}}
{{- $service := include "localmodel.webhook.serviceName" . -}}
{{- $existing := lookup "v1" "Secret" $ns .Values.webhooks.secretName -}}
{{- if and $existing (index $existing.data "ca.crt") -}}
{{- $_ := set .Values "_webhookTLS" (dict "ca" (index $existing.data "ca.crt") "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key")) -}}
{{- else -}}
{{- $days := int .Values.webhooks.certificate.validityDays -}}
{{- $ca := genCA "localmodel-webhook-ca" $days -}}
{{- $names := list (printf "%s.%s.svc" $service $ns) (printf "%s.%s.svc.cluster.local" $service $ns) -}}
{{- $cert := genSignedCert (first $names) nil $names $days $ca -}}
{{- $_ := set .Values "_webhookTLS" (dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- toYaml .Values._webhookTLS -}}
{{- end -}}

{{/* caBundle for the webhook configurations; empty when cert-manager injects it. */}}
{{- define "localmodel.webhook.caBundle" -}}
{{- $source := .Values.webhooks.certificate.source -}}
{{- if eq $source "helm" -}}
{{- (include "localmodel.webhook.tls" . | fromYaml).ca -}}
{{- else if eq $source "manual" -}}
{{- required "webhooks.certificate.caBundle is required when webhooks.certificate.source=manual" .Values.webhooks.certificate.caBundle -}}
{{- end -}}
{{- end -}}

{{- define "localmodel.webhook.annotations" -}}
{{- if eq .Values.webhooks.certificate.source "certManager" -}}
annotations:
  cert-manager.io/inject-ca-from: {{ include "localmodel.namespace" . }}/localmodel-serving-cert
{{- end -}}
{{- end -}}
