#!/usr/bin/env bash
# End-to-end on a kind cluster: build both images, load them into kind, install MinIO and the
# chart, distill the digits MLP in the cluster, and check the verdict, the StudentModel and the
# artifacts in the bucket. Needs docker (a running daemon), kind, kubectl, helm, and a Python
# with the project's dev extras (torch, scikit-learn, boto3) to make the teacher and data.
#
#   bash tests/e2e/kind/run.sh
#
# Environment:
#   KIND_CLUSTER   cluster name (default distillery-e2e); reused when it exists
#   KEEP_CLUSTER   1: leave the cluster (and what is in it) after the run
#   PYTHON         the Python to use (default: .venv/bin/python, else python3)
#   HELM           the helm binary (default: DISTILLERY_HELM_BIN, else helm on PATH)
#   TRAINER_BASE   base image of the CPU-only trainer (default: the pinned python slim base)
#   TIMEOUT        how long the job may take (default 20m)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"

cluster="${KIND_CLUSTER:-distillery-e2e}"
keep="${KEEP_CLUSTER:-0}"
timeout="${TIMEOUT:-20m}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
helm="${HELM:-${DISTILLERY_HELM_BIN:-helm}}"
trainer_base="${TRAINER_BASE:-python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c}"
operator_image=distillery/operator:e2e
trainer_image=distillery/trainer:e2e
jobs_ns=distillery-e2e
release=distillery
release_ns=distillery
context="kind-$cluster"
kubectl=(kubectl --context "$context")

log() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl "$helm"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "docker is installed but its daemon does not answer"
"$python" -c "import torch, sklearn, boto3" 2>/dev/null \
    || die "$python lacks torch/scikit-learn/boto3: pip install -e '.[dev]' (or set PYTHON=)"

pf_pid=""
created=0
diagnostics() {
    log "diagnostics"
    "${kubectl[@]}" -n "$jobs_ns" get distillationjobs,studentmodels,jobs,pods -o wide || true
    "${kubectl[@]}" -n "$jobs_ns" describe distillationjob digits || true
    "${kubectl[@]}" -n "$jobs_ns" logs -l app.kubernetes.io/component=trainer --tail=80 || true
    "${kubectl[@]}" -n "$release_ns" logs deploy/"$release" --tail=120 || true
    "${kubectl[@]}" -n "$jobs_ns" get events --sort-by=.lastTimestamp | tail -30 || true
}
cleanup() {
    local rc=$?
    [[ -n "$pf_pid" ]] && kill "$pf_pid" 2>/dev/null || true
    if [[ $rc -ne 0 ]]; then diagnostics; fi
    if [[ "$keep" != 1 && $created == 1 ]]; then
        kind delete cluster --name "$cluster" || true
    elif [[ "$keep" == 1 ]]; then
        echo "kept cluster $cluster (kind delete cluster --name $cluster)" >&2
    fi
    exit $rc
}
trap cleanup EXIT

log "kind cluster $cluster"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    kind create cluster --name "$cluster" --wait 180s
    created=1
fi

log "images"
docker build -t "$operator_image" -f Dockerfile .
docker build -t "$trainer_image" -f trainer_image/Dockerfile \
    --build-arg CPU_ONLY=1 --build-arg BASE_IMAGE="$trainer_base" .
# The operator image must not carry torch; the trainer runs as uid 1000.
if docker run --rm --entrypoint python "$operator_image" -c "import torch" 2>/dev/null; then
    die "the operator image contains torch"
fi
[[ "$(docker run --rm --entrypoint id "$trainer_image" -u)" == 1000 ]] || die "the trainer image does not run as 1000"
kind load docker-image --name "$cluster" "$operator_image" "$trainer_image"

log "MinIO"
"${kubectl[@]}" apply -f "$here/minio.yaml"
"${kubectl[@]}" -n minio rollout status deployment/minio --timeout=180s
access_key=$("${kubectl[@]}" -n minio get secret minio-root -o jsonpath='{.data.MINIO_ROOT_USER}' | base64 -d)
secret_key=$("${kubectl[@]}" -n minio get secret minio-root -o jsonpath='{.data.MINIO_ROOT_PASSWORD}' | base64 -d)

log "namespace $jobs_ns (Pod Security: restricted) and the store credentials"
"${kubectl[@]}" create namespace "$jobs_ns" --dry-run=client -o yaml | "${kubectl[@]}" apply -f -
"${kubectl[@]}" label namespace "$jobs_ns" --overwrite \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest
"${kubectl[@]}" -n "$jobs_ns" create secret generic store-creds \
    --from-literal=AWS_ACCESS_KEY_ID="$access_key" --from-literal=AWS_SECRET_ACCESS_KEY="$secret_key" \
    --dry-run=client -o yaml | "${kubectl[@]}" apply -f -

log "chart"
"$helm" --kube-context "$context" upgrade --install "$release" charts/distillery \
    --namespace "$release_ns" --create-namespace --wait --timeout 5m \
    --set image.repository="${operator_image%%:*}" --set-string image.tag="${operator_image##*:}" \
    --set trainer.image.repository="${trainer_image%%:*}" --set-string trainer.image.tag="${trainer_image##*:}" \
    --set store.endpoint=http://minio.minio.svc:9000 --set store.credentialsSecret=store-creds \
    --set "watchNamespaces={$jobs_ns}" --set operator.verbose=true
"$helm" --kube-context "$context" test "$release" --namespace "$release_ns" --logs --timeout 3m

log "teacher and data into MinIO"
port=$("$python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"${kubectl[@]}" -n minio port-forward svc/minio "$port:9000" >/dev/null 2>&1 &
pf_pid=$!
"$python" - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/minio/health/ready"
for _ in range(60):
    try:
        urllib.request.urlopen(url, timeout=2)
        break
    except OSError:
        time.sleep(1)
else:
    sys.exit(f"MinIO did not answer on {url}")
PY
export AWS_ACCESS_KEY_ID="$access_key" AWS_SECRET_ACCESS_KEY="$secret_key"
"$python" "$here/prepare_digits.py" upload --endpoint "http://127.0.0.1:$port"

log "DistillationJob"
"${kubectl[@]}" -n "$jobs_ns" apply -f "$here/digits-job.yaml"
"${kubectl[@]}" -n "$jobs_ns" wait --for=condition=Succeeded distillationjob/digits --timeout="$timeout"
"${kubectl[@]}" -n "$jobs_ns" get distillationjob digits

log "checks"
accepted=$("${kubectl[@]}" -n "$jobs_ns" get distillationjob digits -o jsonpath='{.status.accepted}')
[[ "$accepted" == true ]] || die "the student was not accepted: $("${kubectl[@]}" -n "$jobs_ns" get dj digits -o jsonpath='{.status.message}')"
student=$("${kubectl[@]}" -n "$jobs_ns" get distillationjob digits -o jsonpath='{.status.studentModel}')
[[ -n "$student" ]] || die "no StudentModel in the job's status"
"${kubectl[@]}" -n "$jobs_ns" wait --for=jsonpath='{.status.onFrontier}'=true "studentmodel/$student" --timeout=120s
"${kubectl[@]}" -n "$jobs_ns" get studentmodels
generation=$("${kubectl[@]}" -n "$jobs_ns" get distillationjob digits -o jsonpath='{.metadata.generation}')
"$python" "$here/prepare_digits.py" check --endpoint "http://127.0.0.1:$port" --prefix "runs/digits/g$generation"
# GitOps: applying the same manifest again changes nothing (the operator never writes spec).
"${kubectl[@]}" -n "$jobs_ns" diff -f "$here/digits-job.yaml" >/dev/null \
    || die "kubectl diff shows drift between the manifest and the live DistillationJob"

log "e2e passed"
