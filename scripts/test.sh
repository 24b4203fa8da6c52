#!/usr/bin/env bash
# The README's test command: sets up everything the tests use, then runs them.
#   1. a virtualenv (.venv, or $DISTILLERY_VENV) with the project and its dev extras (pip caches
#      the large torch wheels, so a warm run installs nothing new);
#   2. MinIO built from its pinned Go module, cached outside the repo (scripts/setup-test-tools.sh);
#   3. the real control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and helm,
#      built the same way (scripts/build-control-plane.sh; about 17 minutes cold on 2 cores);
#   4. pytest, with any arguments given here passed through.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${DISTILLERY_VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
fi
# --prefer-binary keeps pip from backtracking into source builds of old releases.
"$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check -e '.[dev]'

if bash scripts/setup-test-tools.sh; then
    # The build succeeded, so a test that cannot find MinIO is a real failure, not a skip.
    source "${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}/env.sh" 2>/dev/null || true
    if [[ -n "${DISTILLERY_MINIO_BIN:-}" ]]; then
        export DISTILLERY_REQUIRE_MINIO=1
    fi
fi

if bash scripts/build-control-plane.sh; then
    # The build succeeded, so a test that cannot start the control plane is a real failure.
    export DISTILLERY_REQUIRE_CONTROL_PLANE=1
fi

exec "$VENV/bin/python" -m pytest "$@"
