#!/usr/bin/env bash
# Self-managed webhook certificate (no cert-manager): makes a CA and a serving certificate for
# Service localmodel-webhook-server-service.kserve.svc with openssl, stores them in Secret
# kserve/localmodel-webhook-server-cert (tls.crt, tls.key) and writes the CA into caBundle of
# localmodel's webhook configurations. Re-run it to rotate; the controller reloads the files.
set -euo pipefail
NAMESPACE=${NAMESPACE:-kserve}
SERVICE=${SERVICE:-localmodel-webhook-server-service}
DAYS=${DAYS:-825}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -days "$DAYS" -subj "/CN=localmodel-webhook-ca" \
  -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$SERVICE.$NAMESPACE.svc" \
  -keyout "$work/tls.key" -out "$work/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
  "$SERVICE" "$SERVICE" "$NAMESPACE" "$SERVICE" "$NAMESPACE" "$SERVICE" "$NAMESPACE" > "$work/ext.cnf"
openssl x509 -req -in "$work/tls.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
  -days "$DAYS" -extfile "$work/ext.cnf" -out "$work/tls.crt" 2>/dev/null
kubectl -n "$NAMESPACE" create secret tls localmodel-webhook-server-cert \
  --cert="$work/tls.crt" --key="$work/tls.key" --dry-run=client -o yaml | kubectl apply -f -
bundle=$(base64 -w0 < "$work/ca.crt")
for config in validatingwebhookconfiguration/localmodelcache.serving.kserve.io \
              mutatingwebhookconfiguration/localmodel-pod-mounter \
              mutatingwebhookconfiguration/localmodel-inferenceservice-defaulter; do
  count=$(kubectl get "$config" -o jsonpath='{range .webhooks[*]}x{end}' 2>/dev/null | wc -c) || continue
  for ((i = 0; i < count; i++)); do
    kubectl patch "$config" --type=json \
      -p "[{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}]" >/dev/null
  done
  echo "caBundle set on $config"
done
