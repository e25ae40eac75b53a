# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install controlplane nodes image demo test lint crds docs

$(BIN)/localmodel: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

install: $(BIN)/localmodel

# Real etcd + kube-apiserver + kubectl built from Go modules (minutes cold, instant when cached).
controlplane: install
	bash hack/build-controlplane.sh

# kubelet, kube-scheduler, kube-proxy, containerd, runc, CNI plugins and the pause image for
# real nodes (docs/realnodes.md); minutes cold, instant when cached.
nodes: install
	$(BIN)/python -m localmodel.dev.nodebuild

# The product image from Debian packages (mmdebstrap; needs root), as an OCI archive in
# .cache/image/ for `ctr images import`. Without Docker; `docker build .` also works.
image: install
	$(BIN)/localmodel dev image

# The product as local processes on a local control plane. `make demo REAL_NODES=1`: the same
# with the product as real Pods on two real nodes (kubelets + containerd, the image built from
# Debian packages, `kubectl apply -k deploy/`; needs root), = `localmodel dev demo --real-nodes`.
demo: install
	$(BIN)/localmodel dev demo $(if $(REAL_NODES),--real-nodes)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The CRDs are generated from src/localmodel/api/types.py; both install paths carry a copy
# (tests fail when either is stale).
crds: install
	$(BIN)/localmodel crds --write deploy/crds
	$(BIN)/localmodel crds --write charts/localmodel/crds

# The flag tables of docs/configuration.md are generated from the commands (a test checks them).
docs: install
	$(BIN)/localmodel dev docs docs/configuration.md
