# syntax=docker/dockerfile:1
# The Distillery operator: `distillery operator` (kopf). Only the core package and the
# [operator] extra are installed; the operator never imports torch, and the image has none.
#
#   docker build -t ghcr.io/distillery/operator:0.1.0 .
#
# The base is pinned by tag and digest (the multi-platform index of python:3.12.12-slim-bookworm).
#
# Offline builds (no package index reachable from the build): serve a directory of wheels over
# HTTP and pass --network host --build-arg PIP_FIND_LINKS=http://127.0.0.1:PORT/
# --build-arg PIP_NO_INDEX=1 (scripts/build-images.sh does that, and swaps the base with
# --build-arg PYTHON_IMAGE=...). As nothing is downloaded over TLS then, the build needs no CA
# bundle either. Both arguments are declared in the build stage only, so the runtime image
# carries nothing of them; left unset, pip uses PyPI.
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c

# ---------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
# Offline builds only (see above); no defaults, so unset means PyPI.
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The project itself (pyproject + the operator package), installed as a wheel; no module copies.
# (hatchling skips the trainer package, which is not in this build context's COPY.)
COPY pyproject.toml README.md ./
COPY operator/ operator/
# DL3013: this installs the project itself; its dependency ranges live in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[operator]' \
    && pip check \
    && python -c "import distillery.controller.handlers, kopf, kubernetes, prometheus_client" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the operator image" >&2; exit 1; fi

# -------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="distillery-operator" \
      org.opencontainers.image.description="Distillery operator (kopf): DistillationJob -> trainer Job -> status" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/distillery/distillery"
# A fixed numeric non-root user, so runAsNonRoot can verify it (the chart runs it as 1000:1000).
RUN groupadd --gid 1000 distillery \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin distillery
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
USER 1000:1000
WORKDIR /tmp
# 8080: Prometheus metrics (/metrics), 8081: kopf's liveness endpoint (/healthz).
EXPOSE 8080 8081
ENTRYPOINT ["distillery"]
CMD ["operator"]
