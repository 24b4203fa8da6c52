#!/usr/bin/env bash
# Builds the real services the tests run against (MinIO, Kueue) from their pinned Go modules
# under tools/<name>/ with the plain `go` client, and caches the binaries outside the repo:
#
#   ${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}/<name>-<version>/bin/<name>
#
# A warm run (binary already cached) builds nothing. The resolved paths are recorded in
# ${DISTILLERY_TOOLS_DIR}/env.sh (e.g. `export DISTILLERY_MINIO_BIN=...`); tests read that
# variable, or else look in the cache path above.
#
# A failed build (no Go, no network, ...) is a warning, not an error: the script exits 0, the
# tool is marked unavailable in env.sh, and the tests that need it skip with a clear reason.
# With DISTILLERY_REQUIRE_MINIO=1 (CI) a failed build is an error instead, and the same variable
# makes the tests fail rather than skip when the binary is missing.
# The Go build itself (cache layout, temp-then-rename) is scripts/lib/go-tools.sh, shared with
# scripts/build-control-plane.sh.
set -euo pipefail

# shellcheck source=lib/go-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tools.sh"
ENV_FILE="$TOOLS_DIR/env.sh"
GO_BUILD_NICE=10 GO_BUILD_JOBS=""  # MinIO builds with Go's default parallelism

log() { echo "[setup-test-tools] $*" >&2; }

# Sets (or with no value, removes) `export VAR=value` in env.sh, keeping other tools' lines.
record_env() { # <VAR> [value]
    mkdir -p "$TOOLS_DIR"
    local tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    { grep -v -E "^(export )?$1=|^# $1 " "$ENV_FILE" 2>/dev/null || true; } >"$tmp"
    if [[ $# -ge 2 ]]; then
        echo "export $1=$2" >>"$tmp"
    else
        echo "# $1 unavailable: build failed $(date -u +%FT%TZ); rerun $0" >>"$tmp"
    fi
    mv "$tmp" "$ENV_FILE"
}

# MinIO stamps its version through ldflags; derive it from the pseudo-version
# (v0.0.0-YYYYMMDDhhmmss-commit) so `minio --version` is not DEVELOPMENT.GOGET.
minio_ldflags() { # <pseudo-version>
    local ts commit t
    IFS=- read -r _ ts commit <<<"$1"
    t="${ts:0:4}-${ts:4:2}-${ts:6:2}T${ts:8:2}:${ts:10:2}:${ts:12:2}Z"
    echo "-X github.com/minio/minio/cmd.Version=$t" \
        "-X github.com/minio/minio/cmd.ReleaseTag=DEVELOPMENT.${t//:/-}" \
        "-X github.com/minio/minio/cmd.CopyrightYear=${ts:0:4}" \
        "-X github.com/minio/minio/cmd.CommitID=$commit" \
        "-X github.com/minio/minio/cmd.ShortCommitID=$commit"
}

setup_minio() {
    local version bin
    version="$(pinned_version tools/minio github.com/minio/minio)"
    if [[ -n "$version" ]] && bin="$(go_build_cached minio tools/minio "$version" github.com/minio/minio "" \
        "$(minio_ldflags "$version")")"; then
        record_env DISTILLERY_MINIO_BIN "$bin"
    else
        record_env DISTILLERY_MINIO_BIN
        if [[ "${DISTILLERY_REQUIRE_MINIO:-}" == "1" ]]; then
            log "ERROR: MinIO is unavailable and DISTILLERY_REQUIRE_MINIO=1"
            return 1
        fi
        log "WARNING: MinIO is unavailable; tests marked 'minio' will be skipped"
    fi
}

# Kueue's controller (for the Kueue end-to-end test) and the CRDs of the same release, taken from
# the pinned module (config/components/crd/bases) while the module cache is still there.
setup_kueue() {
    local version bin crds
    version="$(pinned_version tools/kueue sigs.k8s.io/kueue)"
    crds="$TOOLS_DIR/kueue-$version/crds"
    if [[ -n "$version" ]] && bin="$(go_build_cached kueue tools/kueue "$version" sigs.k8s.io/kueue/cmd/kueue "" \
        "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$version")" && kueue_crds "$version" "$crds"; then
        record_env DISTILLERY_KUEUE_BIN "$bin"
        record_env DISTILLERY_KUEUE_CRDS "$crds"
    else
        record_env DISTILLERY_KUEUE_BIN
        log "WARNING: Kueue is unavailable; the Kueue end-to-end test will fail with this reason"
    fi
}

kueue_crds() { # <version> <dir>
    [[ -n "$(ls "$2"/*.yaml 2>/dev/null)" ]] && return 0
    local source
    source="$(cd "$REPO_ROOT/tools/kueue" && GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod \
        GOMODCACHE="$GO_CACHES_DIR/mod" "$GO" mod download -json "sigs.k8s.io/kueue@$1" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" || return 1
    mkdir -p "$2.tmp"
    cp "$source"/config/components/crd/bases/*.yaml "$2.tmp/" && mv "$2.tmp" "$2"
}

main() {
    setup_minio
    setup_kueue
    go_caches_remove
    log "done; tool paths in $ENV_FILE:"
    cat "$ENV_FILE" >&2
}

main "$@"
