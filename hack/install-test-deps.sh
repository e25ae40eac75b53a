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

# nginx: the real HTTP(S) server of tests/servers/nginx.py; openssl makes its test CA.
apt_install nginx-light openssl
