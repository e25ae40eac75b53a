#!/usr/bin/env bash
# Builds localmodel's wheel and installs it, with the dependency versions of requirements.lock,
# into a fresh virtual environment at DEST (without pip: nothing in it but localmodel and its
# runtime dependencies). The Dockerfile's builder stage runs this script, and so does
# tests/packaging/test_wheel.py, so the test exercises the image's own install steps.
#
#   hack/install-venv.sh DEST
#
# PYTHON: the venv's interpreter (default python3). BUILD_PYTHON: the interpreter whose pip
# (>= 22.3) builds the wheel and installs into the venv (default PYTHON).
# WHEELS: a folder holding localmodel's wheel and every dependency's: nothing is built and
# nothing downloaded (pip --no-index). `localmodel dev image` uses it in an offline chroot.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DEST" >&2
  exit 2
fi
dest="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
pip=("${BUILD_PYTHON:-$python}" -m pip)

if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
  echo "$dest exists and is not empty" >&2
  exit 1
fi

offline=()
if [ -n "${WHEELS:-}" ]; then
  wheels="$WHEELS"
  offline=(--no-index --find-links "$WHEELS")
else
  wheels="$(mktemp -d)"
  trap 'rm -rf "$wheels"' EXIT
  # The project's wheel only; its dependencies come from the lock below.
  "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$wheels" "$repo"
fi
wheel=("$wheels"/localmodel-*.whl)

"$python" -m venv --without-pip "$dest"
# The lock is a constraint, not a requirement list: it also pins test tools, and only what the
# wheel needs at run time goes into the venv, at the locked versions.
"${pip[@]}" --python "$dest/bin/python" install --quiet --no-warn-script-location "${offline[@]}" \
  --constraint "$repo/requirements.lock" "${wheel[0]}"

"$dest/bin/localmodel" version >/dev/null
echo "installed $(basename "${wheel[0]}") into $dest"
