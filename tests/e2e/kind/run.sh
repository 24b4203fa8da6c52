#!/usr/bin/env bash
# The end-to-end scenario (tests/e2e/test_scenario.py) on a kind cluster: the same test module the
# README's test command runs on the real single-node cluster it starts here. This script creates
# the kind cluster, builds our images from the project's Dockerfiles, loads them into kind, and
# runs the scenario against it. Needs docker (a running daemon), kind, kubectl, helm, network
# access for the image builds, and a Python with the project's dev extras.
#
#   bash tests/e2e/kind/run.sh
#
# Environment:
#   KIND_CLUSTER   cluster name (default distillery-e2e); reused when it exists
#   KEEP_CLUSTER   1: leave the cluster (and what is in it) after the run
#   PYTHON         the Python to use (default: .venv/bin/python, else python3)
#   HELM           the helm binary (default: DISTILLERY_HELM_BIN, else helm on PATH)
#   TRAINER_BUILD_ARGS  extra `docker build` arguments for the trainer image, e.g.
#                  "--build-arg CPU_ONLY=1" for a small CPU-only image from PyTorch's CPU index
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"

cluster="${KIND_CLUSTER:-distillery-e2e}"
keep="${KEEP_CLUSTER:-0}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
helm="${HELM:-${DISTILLERY_HELM_BIN:-helm}}"
operator_image=docker.io/distillery/operator:e2e
trainer_image=docker.io/distillery/trainer:e2e
# MinIO from its public image, pinned by digest (the real-node run builds its own).
minio_upstream="$(grep -v "^#" "$here/minio-image.txt" | head -n 1)"
minio_image=docker.io/distillery/minio:e2e

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl "$helm"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"
"$python" -c "import torch, sklearn, boto3, pytest" 2>/dev/null \
    || die "$python lacks torch/scikit-learn/boto3/pytest: pip install -e '.[dev]' (or set PYTHON=)"

created=0
work="$(mktemp -d)"
cleanup() {
    local rc=$?
    if [[ "$keep" != 1 && $created == 1 ]]; then
        kind delete cluster --name "$cluster" || true
    elif [[ "$keep" == 1 ]]; then
        echo "kept cluster $cluster (kind delete cluster --name $cluster)" >&2
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT

log "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    kind create cluster --name "$cluster" --wait 180s
    created=1
fi
kind get kubeconfig --name "$cluster" >"$work/kubeconfig"

log "images"
docker build -t "$operator_image" -f Dockerfile .
# shellcheck disable=SC2086 # TRAINER_BUILD_ARGS is a list of arguments
docker build -t "$trainer_image" -f trainer_image/Dockerfile ${TRAINER_BUILD_ARGS:-} .
docker pull "$minio_upstream"
docker tag "$minio_upstream" "$minio_image"  # kind loads tagged images
kind load docker-image --name "$cluster" "$operator_image" "$trainer_image" "$minio_image"

log "the scenario (tests/e2e/test_scenario.py)"
DISTILLERY_E2E_KUBECONFIG="$work/kubeconfig" DISTILLERY_E2E_CONTEXT="kind-$cluster" \
DISTILLERY_E2E_IMAGE_OPERATOR="$operator_image" DISTILLERY_E2E_IMAGE_TRAINER="$trainer_image" \
DISTILLERY_E2E_IMAGE_MINIO="$minio_image" DISTILLERY_HELM_BIN="$(command -v "$helm")" \
    "$python" -m pytest tests/e2e/test_scenario.py -v -p no:cacheprovider
log "e2e passed"
