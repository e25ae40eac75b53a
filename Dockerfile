# syntax=docker/dockerfile:1
# localmodel: one image for the node agent (`localmodel agent`) and the controller
# (`localmodel controller`). Build: docker build -t ghcr.io/localmodel/localmodel:0.1.0 .
# (docs/installation.md, "Building the image").

# Both stages use the same base so the virtual environment's interpreter path is valid in the
# runtime stage. Pin by digest for reproducible builds: --build-arg PYTHON_IMAGE=python@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (see .dockerignore); tests and docs stay out.
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
COPY hack/install-venv.sh ./hack/
# Wheel of localmodel + its runtime dependencies at the locked versions, in /opt/localmodel.
RUN hack/install-venv.sh /opt/localmodel

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="localmodel" \
      org.opencontainers.image.description="Node-local model cache for Kubernetes (KServe LocalModelCache compatible)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/localmodel /opt/localmodel
# No .pyc is written at run time (the root filesystem is read-only in the Pod; pip compiled
# them at install), and logs are not buffered.
ENV PATH=/opt/localmodel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# UID/GID 1000 as in the Pod securityContext and KServe's fsGroup: model files on the node are
# written by this user. Numeric, so runAsNonRoot can verify it without a passwd entry.
USER 1000:1000
WORKDIR /tmp
# Exec form: no shell between the container runtime and localmodel, so signals reach it.
ENTRYPOINT ["localmodel"]
CMD ["--help"]
