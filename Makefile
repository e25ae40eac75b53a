# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps controlplane nodes image oci-tools test-deps demo test lint crds docs

$(BIN)/localmodel: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/localmodel

# Debian and npm packages the builds and tests need (nginx, azurite, mmdebstrap, iptables, gcc...):
# hack/install-test-deps.sh, idempotent and fast when all is there.
system-deps:
	bash hack/install-test-deps.sh

# Real etcd + kube-apiserver + kubectl built from Go modules (minutes cold, instant when cached).
controlplane: install
	bash hack/build-controlplane.sh

# kubelet, kube-scheduler, kube-proxy, containerd, runc, CNI plugins and the pause image for
# real nodes (docs/realnodes.md); minutes cold, instant when cached.
nodes: install system-deps
	$(BIN)/python -m localmodel.dev.nodebuild

# CNCF distribution's registry and the oras and crane clients, built from Go modules for the
# oci:// tests (tests/servers/oci.py); about 2 minutes cold, instant when cached.
oci-tools:
	bash hack/build-oci-tools.sh >/dev/null

# The product image from Debian packages (mmdebstrap; needs root), as an OCI archive in
# .cache/image/ for `ctr images import`. Without Docker; `docker build .` also works.
image: install system-deps
	$(BIN)/localmodel dev image

# The product as local processes on a local control plane. `make demo REAL_NODES=1`: the same
# with the product as real Pods on two real nodes (kubelets + containerd, the image built from
# Debian packages, `kubectl apply -k deploy/`; needs root), = `localmodel dev demo --real-nodes`.
demo: install
	$(BIN)/localmodel dev demo $(if $(REAL_NODES),--real-nodes)

# What the tests need beyond Python packages: nginx, azurite, iptables, mmdebstrap...
# (hack/install-test-deps.sh, apt and npm), the control plane, the real nodes' binaries, helm and
# the OCI registry and clients (built from Go modules) and the product image. Idempotent: seconds when all is there, so
# `make test` runs it every time and works from a fresh clone.
test-deps: system-deps controlplane nodes image oci-tools
	bash hack/build-helm.sh >/dev/null

test: test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The CRDs are generated from src/localmodel/api/types.py; both install paths carry a copy
# (tests fail when either is stale).
crds: install
	$(BIN)/localmodel crds --write deploy/crds
	$(BIN)/localmodel crds --write charts/localmodel/crds

# The flag tables of docs/configuration.md are generated from the commands (a test checks them).
docs: install
	$(BIN)/localmodel dev docs docs/configuration.md
