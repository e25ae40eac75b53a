#!/usr/bin/env bash
# Builds helm from Go modules (no binary download exists here) and prints the binary's path.
# Idempotent and cached: the binary lives in ~/.cache/localmodel/helm/<version>/helm; a second
# call only prints the path. Build output goes to stderr so `$(hack/build-helm.sh)` is the path.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
module="helm.sh/helm/${HELM_VERSION%%.*}"   # v3.22.0 -> helm.sh/helm/v3
cache_root="${LOCALMODEL_CACHE:-$HOME/.cache/localmodel}"
dir="$cache_root/helm/$HELM_VERSION"
bin="$dir/helm"

if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$dir"
# Two test sessions may ask at once: one builds, the other waits for it.
exec 9>"$dir.lock"
flock 9
if [ ! -x "$bin" ]; then
  staging="$(mktemp -d "$dir.build.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  start=$(date +%s)
  echo "building helm $HELM_VERSION from Go modules (first time only)..." >&2
  # GOTOOLCHAIN=local: build with the installed Go rather than fetching another toolchain.
  # The version stamp is what `helm version` prints; without it helm reports a dev version.
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$staging" go install -trimpath \
    -ldflags "-s -w -X $module/internal/version.version=$HELM_VERSION" \
    "$module/cmd/helm@$HELM_VERSION" >&2
  mv "$staging/helm" "$bin"
  echo "helm $HELM_VERSION built in $(( $(date +%s) - start ))s" >&2
fi
echo "$bin"
