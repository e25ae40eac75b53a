#!/usr/bin/env bash
# Build the local control plane (etcd, kube-apiserver, kubectl, kube-controller-manager) from the
# Go module in hack/controlplane, into ~/.cache/localmodel/controlplane/<digest>/.
# Idempotent: returns at once when the binaries for the current sources exist.
# Needs: Go >= 1.26 on PATH, network to the Go module proxy on the first build, and the venv
# (`make install`). A cold build takes several minutes on 2 cores; CI runs this before the tests
# so the build time shows on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m localmodel.dev.controlplane build
