# Shared by scripts/setup-test-tools.sh and scripts/build-control-plane.sh (sourced, not run):
# building a tool from a pinned Go module into the cache outside the repo, once per version:
#
#   ${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}/<name>-<version>/bin/<name>
#
# The caller defines log() and may set GO_BUILD_NICE (default 19) and GO_BUILD_JOBS (go build
# -p; empty = Go's default, one per core).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
# Go's build and module caches for these builds: about 9 GB after a cold build of the control
# plane, needed only while building (the binaries are cached by version), so a run that built
# something removes them at its end with go_caches_remove; the disk is shared with the images.
GO_CACHES_DIR="$TOOLS_DIR/.go-caches"

# The version a module dir pins for `module` (its require line in go.mod). Parsed with awk so
# a warm run neither needs nor waits for the go command.
pinned_version() { # <module-dir> <module-path>
    awk -v m="$2" '($1 == m && $2 ~ /^v/) {print $2; exit} ($1 == "require" && $2 == m) {print $3; exit}' \
        "$REPO_ROOT/$1/go.mod"
}

# Builds `package` from `module-dir` into the cache unless it is there already. Prints the
# binary's path on stdout; returns non-zero (after logging why) when it cannot be built.
go_build_cached() { # <name> <module-dir> <version> <package> [build tags] [extra -ldflags]
    local name="$1" moddir="$2" version="$3" pkg="$4" tags="${5:-}" ldflags="${6:-}"
    local bin="$TOOLS_DIR/$name-$version/bin/$name"
    if [[ -x "$bin" ]]; then
        log "$name $version: cached at $bin"
        echo "$bin"
        return 0
    fi
    if ! [[ -x "$GO" ]]; then
        log "no go command found (set GO=/path/to/go); cannot build $name"
        return 1
    fi
    log "$name $version: building $pkg from $moddir (cold build, minutes on 2 cores)..."
    mkdir -p "$(dirname "$bin")"
    local start tmp rc=0 jobs="${GO_BUILD_JOBS-1}"
    start=$(date +%s)
    # Build to a temp name and rename, so an interrupted build never looks cached.
    tmp="$bin.tmp.$$"
    (
        cd "$REPO_ROOT/$moddir"
        export GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
        export GOCACHE="$GO_CACHES_DIR/build" GOMODCACHE="$GO_CACHES_DIR/mod"
        nice -n "${GO_BUILD_NICE:-19}" "$GO" build ${jobs:+-p "$jobs"} -trimpath ${tags:+-tags "$tags"} \
            -ldflags "-s -w $ldflags" -o "$tmp" "$pkg"
    ) >&2 || rc=$?
    if [[ $rc -ne 0 ]]; then
        rm -f "$tmp"
        log "building $name $version from $moddir failed (go build exit $rc; see the output above)"
        return 1
    fi
    mv "$tmp" "$bin"
    log "$name $version: built in $(($(date +%s) - start))s -> $bin"
    echo "$bin"
}

# Removes the Go caches of go_build_cached (module files are read-only, hence the chmod).
go_caches_remove() {
    [[ -d "$GO_CACHES_DIR" ]] || return 0
    chmod -R u+w "$GO_CACHES_DIR" 2>/dev/null || true
    rm -rf "$GO_CACHES_DIR"
    log "removed the Go build and module caches ($GO_CACHES_DIR); the built binaries stay cached"
}
