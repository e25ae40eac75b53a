#!/usr/bin/env bash
# Builds the OCI test tools from Go modules (no binary download exists here) and prints the
# folder that holds them: CNCF distribution's `registry`, the `oras` CLI and `crane`
# (go-containerregistry). Idempotent and cached in ~/.cache/localmodel/oci-tools/<versions>/;
# a second call only prints the folder. Build output goes to stderr.
set -euo pipefail

DISTRIBUTION_VERSION="${DISTRIBUTION_VERSION:-v3.1.2}"
ORAS_VERSION="${ORAS_VERSION:-v1.3.6}"
CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
cache_root="${LOCALMODEL_CACHE:-$HOME/.cache/localmodel}"
dir="$cache_root/oci-tools/registry-$DISTRIBUTION_VERSION-oras-$ORAS_VERSION-crane-$CRANE_VERSION"

complete() { [ -x "$dir/registry" ] && [ -x "$dir/oras" ] && [ -x "$dir/crane" ]; }
if complete; then
  echo "$dir"
  exit 0
fi

mkdir -p "$dir"
# Two test sessions may ask at once: one builds, the other waits for it.
exec 9>"$dir.lock"
flock 9
if ! complete; then
  staging="$(mktemp -d "$dir.build.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  start=$(date +%s)
  echo "building registry $DISTRIBUTION_VERSION, oras $ORAS_VERSION, crane $CRANE_VERSION from Go modules (first time only)..." >&2
  # GOTOOLCHAIN=local: build with the installed Go rather than fetching another toolchain.
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$staging" go install -trimpath -ldflags "-s -w" \
    "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION" >&2
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$staging" go install -trimpath -ldflags "-s -w" \
    "oras.land/oras/cmd/oras@$ORAS_VERSION" >&2
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$staging" go install -trimpath -ldflags "-s -w" \
    "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2
  mv "$staging/registry" "$staging/oras" "$staging/crane" "$dir/"
  echo "OCI tools built in $(( $(date +%s) - start ))s" >&2
fi
echo "$dir"
