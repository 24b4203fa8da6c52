#!/usr/bin/env bash
# Builds the real services the tests run against (today: MinIO) from their pinned Go modules
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
#
# Other tool scripts (scripts/build-control-plane.sh) reuse the helpers below:
#   source "$(dirname "$0")/setup-test-tools.sh"     # defines functions only when sourced
#   build_go_tool kube-apiserver tools/kube k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver "-X ..."
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}"
ENV_FILE="$TOOLS_DIR/env.sh"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"

log() { echo "[setup-test-tools] $*" >&2; }

# The version a module dir pins for `module` (its require line in go.mod). Parsed with awk so
# a warm run neither needs nor waits for the go command.
pinned_version() { # <module-dir> <module-path>
    awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' \
        "$REPO_ROOT/$1/go.mod"
}

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

# Builds package `pkg` from the pinned module in `module-dir` into the cache, once per version.
# Prints the binary path on stdout; returns non-zero (after logging why) if the build fails.
build_go_tool() { # <name> <module-dir> <module-path> <package> [extra -ldflags]
    local name="$1" moddir="$2" module="$3" pkg="$4" ldflags="${5:-}"
    local version bin
    version="$(pinned_version "$moddir" "$module")"
    if [[ -z "$version" ]]; then
        log "ERROR: $moddir/go.mod does not pin $module"
        return 1
    fi
    bin="$TOOLS_DIR/$name-$version/bin/$name"
    if [[ -x "$bin" ]]; then
        log "$name $version: cached at $bin"
        echo "$bin"
        return 0
    fi
    if ! [[ -x "$GO" ]]; then
        log "WARNING: no go command found; cannot build $name"
        return 1
    fi
    log "$name $version: building $pkg (cold build, can take 5-15 minutes on 2 cores)..."
    mkdir -p "$(dirname "$bin")"
    local start tmp rc=0
    start=$(date +%s)
    # Build to a temp name and rename, so an interrupted build never looks cached.
    tmp="$bin.tmp.$$"
    (
        cd "$REPO_ROOT/$moddir"
        export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
        nice -n 10 "$GO" build -trimpath -ldflags "-s -w $ldflags" -o "$tmp" "$pkg"
    ) >&2 || rc=$?
    if [[ $rc -ne 0 ]]; then
        rm -f "$tmp"
        log "WARNING: building $name $version failed (exit $rc)"
        return 1
    fi
    mv "$tmp" "$bin"
    log "$name $version: built in $(($(date +%s) - start))s -> $bin"
    echo "$bin"
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
    if bin="$(build_go_tool minio tools/minio github.com/minio/minio github.com/minio/minio \
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

main() {
    setup_minio
    log "done; tool paths in $ENV_FILE:"
    cat "$ENV_FILE" >&2
}

# Sourced by another script: provide the helpers only.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
