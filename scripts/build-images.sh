#!/usr/bin/env bash
# Builds the project's images here, with no container registry: the operator and trainer from
# their Dockerfiles, and the test cluster's MinIO, Kueue and pause images from tools/images/.
#
#   1. Debian packages (docker.io, mmdebstrap, ...) and a dockerd (scripts/lib/host.sh);
#   2. a base image from Debian's packages: `mmdebstrap --variant=minbase` bookworm with python3,
#      imported as docker.io/distillery/debian-python:bookworm (rebuilt only when its package
#      list changes);
#   3. a wheelhouse of exactly what the images install, downloaded once from PyPI into
#      ~/.cache/distillery/wheelhouse and served on 127.0.0.1 to the builds, so no build
#      downloads anything (and none needs a CA bundle);
#   4. the images, built from the Dockerfiles with only the base swapped by a build argument.
#
# Writes ~/.cache/distillery/images.env (DISTILLERY_IMAGE_<NAME>=ref, DISTILLERY_IMAGE_<NAME>_ID=
# docker image ID) for scripts/import-images.sh and the tests. Stops the dockerd it started
# unless DISTILLERY_KEEP_DOCKERD=1; one that was already running stays. Exits non-zero, with the
# failing step and its log tail, on any failure. Build logs: ~/.cache/distillery/logs/.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "[build-images] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
# shellcheck source=lib/host.sh
source "$REPO_ROOT/scripts/lib/host.sh"

CACHE="$DISTILLERY_CACHE"
WHEELHOUSE="$CACHE/wheelhouse"
LOGS="$CACHE/logs"
CONTEXTS="$CACHE/build-contexts"
IMAGES_ENV="$CACHE/images.env"
SUITE=bookworm
BASE_PACKAGES=(python3 python3-venv python-is-python3 passwd ca-certificates)
BASE_REF=docker.io/distillery/debian-python:$SUITE
OPERATOR_REF=docker.io/distillery/operator:dev
TRAINER_REF=docker.io/distillery/trainer:dev
MINIO_REF=docker.io/distillery/minio:dev
KUEUE_REF=docker.io/distillery/kueue:dev
PAUSE_REF=docker.io/distillery/pause:3.10
# The classic builder: Docker 20.10's BuildKit needs buildx and would pull the syntax frontend.
export DOCKER_BUILDKIT=0

SERVER_PID=""
cleanup() {
    [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null
    if [[ "${DISTILLERY_KEEP_DOCKERD:-0}" != 1 ]]; then
        stop_dockerd_if_started
    fi
}
trap cleanup EXIT
trap 'exit 143' INT TERM

# Prints the last lines of a step's log and fails.
fail_with_log() { # <what> <log file>
    log "last lines of $2:"
    tail -n 40 "$2" >&2
    die "$1 (full log: $2)"
}

# The host's Debian mirror for a suite (deb822 .sources or one-line .list), else deb.debian.org.
host_mirror() { # <suite>
    local uri files=()
    # Only files that exist: mawk stops at a missing one.
    for uri in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -f "$uri" ]] && files+=("$uri")
    done
    uri="$( [[ ${#files[@]} -gt 0 ]] && awk -v s="$1" '
        /^URIs:/ {u=$2} /^Suites:/ {for (i = 2; i <= NF; i++) if ($i == s) found=u}
        /^deb / && $3 == s && !found {found=$2} /^$/ {u=""}
        END {print found}' "${files[@]}")"
    if [[ -n "$uri" ]]; then echo "$uri"; elif [[ "$1" == *-security ]]; then
        echo http://deb.debian.org/debian-security; else echo http://deb.debian.org/debian; fi
}

# ---------------------------------------------------------------------------------- base image
build_base() {
    local key current start mirror security
    key="$(printf '%s\n' "$SUITE" "${BASE_PACKAGES[@]}" | sha256sum | cut -c1-16)"
    current="$(docker image inspect -f '{{index .Config.Labels "distillery.io/base-key"}}' "$BASE_REF" 2>/dev/null || true)"
    if [[ "$current" == "$key" ]]; then
        log "base $BASE_REF: cached (key $key)"
        return 0
    fi
    mirror="$(host_mirror "$SUITE")"
    security="$(host_mirror "$SUITE-security")"
    log "base $BASE_REF: mmdebstrap --variant=minbase $SUITE from $mirror (about a minute)..."
    start=$(date +%s)
    mkdir -p "$LOGS"
    # The root filesystem streams as a tar straight into `docker import`; no files on the host.
    if ! mmdebstrap --variant=minbase --include="$(IFS=,; echo "${BASE_PACKAGES[*]}")" \
            --aptopt='Acquire::Retries "3"' "$SUITE" - \
            "deb $mirror $SUITE main" "deb $mirror $SUITE-updates main" \
            "deb $security $SUITE-security main" 2>"$LOGS/base.log" \
        | docker import \
            --change "LABEL distillery.io/base-key=$key" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["python3"]' - "$BASE_REF" >>"$LOGS/base.log" 2>&1; then
        fail_with_log "the base image (mmdebstrap | docker import)" "$LOGS/base.log"
    fi
    log "base $BASE_REF: built in $(($(date +%s) - start))s, $(image_size "$BASE_REF")"
}

# ---------------------------------------------------------------------------------- wheelhouse
# The value of `ARG NAME=value` in a Dockerfile: the versions the trainer pins live there only.
dockerfile_arg() { # <Dockerfile> <NAME>
    sed -n "s/^ARG $2=//p" "$1" | head -n 1
}

pip_python() {
    local venv="${DISTILLERY_VENV:-$REPO_ROOT/.venv}"
    if [[ -x "$venv/bin/python" ]]; then echo "$venv/bin/python"; else command -v python3; fi
}

# Downloads the wheels each image installs, for the base image's Python, unless a stamp says
# this exact set (requirements + target) is already complete.
build_wheelhouse() {
    local py pyver torch ort key stamp start platforms=() v image reqs
    py="$(pip_python)"
    pyver="$(docker run --rm --network none "$BASE_REF" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])')" || die "cannot run python3 in $BASE_REF"
    torch="$(dockerfile_arg "$REPO_ROOT/trainer_image/Dockerfile" TORCH_VERSION)"
    ort="$(dockerfile_arg "$REPO_ROOT/trainer_image/Dockerfile" ONNXRUNTIME_VERSION)"
    mkdir -p "$WHEELHOUSE" "$LOGS"
    for image in operator trainer; do
        "$py" "$REPO_ROOT/tools/images/requirements.py" "$image" --torch "$torch" --onnxruntime "$ort" \
            >"$WHEELHOUSE/requirements-$image.txt" || die "cannot derive the $image requirements from pyproject.toml"
    done
    key="$(cat "$WHEELHOUSE"/requirements-*.txt <(echo "cp${pyver/./} manylinux x86_64") | sha256sum | cut -c1-16)"
    stamp="$WHEELHOUSE/.complete-$key"
    if [[ -f "$stamp" ]]; then
        log "wheelhouse: cached (key $key, $(du -sh "$WHEELHOUSE" | cut -f1))"
        return 0
    fi
    # Every manylinux tag the base's glibc (Debian bookworm: 2.36) accepts.
    for v in $(seq 17 36); do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
    platforms+=(--platform manylinux2014_x86_64 --platform linux_x86_64)
    start=$(date +%s)
    for image in operator trainer; do
        reqs="$WHEELHOUSE/requirements-$image.txt"
        log "wheelhouse: pip download for the $image image (Python $pyver; the trainer's is about 3 GB cold)..."
        # Each image's set is resolved on its own, as its Dockerfile's pip install will resolve it.
        if ! "$py" -m pip download --disable-pip-version-check --only-binary=:all: \
                --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" --abi abi3 --abi none \
                "${platforms[@]}" -d "$WHEELHOUSE" -r "$reqs" >"$LOGS/wheelhouse-$image.log" 2>&1; then
            fail_with_log "pip download of the $image wheels" "$LOGS/wheelhouse-$image.log"
        fi
    done
    rm -f "$WHEELHOUSE"/.complete-*
    touch "$stamp"
    log "wheelhouse: ready in $(($(date +%s) - start))s ($(du -sh "$WHEELHOUSE" | cut -f1))"
}

# Serves the wheelhouse on a loopback port; sets WHEELS_URL. The port is fixed when free,
# because the URL is a build argument of pip's RUN steps and so part of their layer cache key.
serve_wheelhouse() {
    local port="${DISTILLERY_WHEELHOUSE_PORT:-38471}" i
    if ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
        log "wheelhouse: port $port is taken; using a free one (the pip layers will not be cached this time)"
        port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$WHEELHOUSE" "$port" >"$LOGS/wheelhouse-server.log" 2>&1 &
    SERVER_PID=$!
    WHEELS_URL="http://127.0.0.1:$port/"
    for i in $(seq 1 50); do
        if python3 -c "import urllib.request as u; u.urlopen('$WHEELS_URL', timeout=1)" 2>/dev/null; then
            log "wheelhouse: served at $WHEELS_URL"
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.2
    done
    fail_with_log "the wheelhouse HTTP server did not answer on $WHEELS_URL" "$LOGS/wheelhouse-server.log"
}

# ------------------------------------------------------------------------------------- images
image_size() { # <ref>
    docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'
}

image_id() { # <ref>
    docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true
}

declare -A BUILT_SECONDS=()
# docker build with its output in a log; prints the time and size. With a Dockerfile that has
# named stages, each stage is built and tagged first (<ref>-stage-<name>, a cache hit after the
# final build), so the layer cache of the current build is tagged and the previous build's
# images can be removed: the trainer's dependencies alone take 6 GB twice (stage and runtime).
docker_build() { # <name> <ref> [-f Dockerfile] <docker build args...>
    local name="$1" ref="$2" start dockerfile="" stage old=() id stages=()
    shift 2
    [[ "${1:-}" == -f ]] && dockerfile="$2"
    start=$(date +%s)
    log "$name: docker build -t $ref ..."
    : >"$LOGS/build-$name.log"
    [[ -n "$dockerfile" ]] && mapfile -t stages < <(awk 'toupper($1) == "FROM" && toupper($3) == "AS" {print $4}' "$dockerfile")
    old+=("$(image_id "$ref")")
    for stage in "${stages[@]}"; do old+=("$(image_id "${ref}-stage-$stage")"); done
    if ! docker build --network host -t "$ref" "$@" >>"$LOGS/build-$name.log" 2>&1; then
        fail_with_log "docker build of the $name image" "$LOGS/build-$name.log"
    fi
    for stage in "${stages[@]}"; do
        docker build --network host --target "$stage" -t "${ref}-stage-$stage" "$@" >>"$LOGS/build-$name.log" 2>&1 \
            || fail_with_log "docker build --target $stage of the $name image" "$LOGS/build-$name.log"
    done
    BUILT_SECONDS[$name]=$(($(date +%s) - start))
    # The previous build's images, now untagged: removing them frees their layers.
    local i
    for ((i = ${#old[@]} - 1; i >= 0; i--)); do  # later stages first: they are the children
        id="${old[i]}"
        if [[ -n "$id" ]] && [[ "$(docker image inspect -f '{{len .RepoTags}}' "$id" 2>/dev/null)" == 0 ]]; then
            docker rmi "$id" >/dev/null 2>&1 || true
        fi
    done
    log "$name: $ref built in ${BUILT_SECONDS[$name]}s, $(image_size "$ref")"
}

build_operator() {
    docker_build operator "$OPERATOR_REF" -f "$REPO_ROOT/Dockerfile" \
        --build-arg PYTHON_IMAGE="$BASE_REF" \
        --build-arg PIP_FIND_LINKS="$WHEELS_URL" --build-arg PIP_NO_INDEX=1 "$REPO_ROOT"
}

build_trainer() {
    docker_build trainer "$TRAINER_REF" -f "$REPO_ROOT/trainer_image/Dockerfile" \
        --build-arg BASE_IMAGE="$BASE_REF" \
        --build-arg PIP_FIND_LINKS="$WHEELS_URL" --build-arg PIP_NO_INDEX=1 "$REPO_ROOT"
}

# A fresh build context holding a Dockerfile from tools/images/<name>/ and the given files.
make_context() { # <name> <file>...
    local dir="$CONTEXTS/$1" src
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$REPO_ROOT/tools/images/$1/Dockerfile" "$dir/"
    shift
    for src in "$@"; do
        ln "$src" "$dir/" 2>/dev/null || cp "$src" "$dir/"
    done
    echo "$dir"
}

build_pause() {
    local version modcache source dir
    version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$REPO_ROOT/tools/k8s/go.mod")"
    [[ -n "$version" ]] || die "no k8s.io/kubernetes version in tools/k8s/go.mod"
    local go="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
    modcache="$("$go" env GOMODCACHE)" || die "cannot run $go (needed to find Kubernetes' pause.c)"
    source="$modcache/k8s.io/kubernetes@$version/build/pause/linux/pause.c"
    if [[ ! -f "$source" ]]; then
        log "pause: downloading k8s.io/kubernetes $version into the Go module cache"
        (cd "$REPO_ROOT/tools/k8s" && GOTOOLCHAIN=local GOWORK=off GOFLAGS=-mod=mod "$go" mod download k8s.io/kubernetes) \
            >"$LOGS/pause-mod.log" 2>&1 || fail_with_log "go mod download k8s.io/kubernetes" "$LOGS/pause-mod.log"
    fi
    mkdir -p "$CONTEXTS"
    # Upstream's flags (build/pause/Makefile), and its binary is stripped the same way.
    gcc -Os -Wall -Werror -static -DVERSION="$version-distillery" -o "$CONTEXTS/pause.bin" "$source" \
        >"$LOGS/pause-gcc.log" 2>&1 || fail_with_log "gcc -static of $source" "$LOGS/pause-gcc.log"
    strip "$CONTEXTS/pause.bin"
    dir="$(make_context pause)"
    mv "$CONTEXTS/pause.bin" "$dir/pause"
    docker_build pause "$PAUSE_REF" "$dir"
}

# The test tool's binary recorded in env.sh, built by scripts/setup-test-tools.sh when missing.
tool_binary() { # <ENV VAR>
    local env_file="${DISTILLERY_TOOLS_DIR:-$CACHE/tools}/env.sh" bin
    # shellcheck disable=SC1090
    bin="$( (source "$env_file" 2>/dev/null; echo "${!1:-}") )"
    if [[ ! -x "$bin" ]]; then
        log "no $1 recorded in $env_file yet; building it (scripts/setup-test-tools.sh)"
        DISTILLERY_REQUIRE_MINIO=1 bash "$REPO_ROOT/scripts/setup-test-tools.sh" >&2 \
            || die "scripts/setup-test-tools.sh failed"
        # shellcheck disable=SC1090
        bin="$( (source "$env_file"; echo "${!1:-}") )"
        [[ -x "$bin" ]] || die "scripts/setup-test-tools.sh ran but $env_file names no $1"
    fi
    echo "$bin"
}

# An image of one Go-built test tool (MinIO, Kueue): its binary, named <name> in the context, on the base.
build_tool_image() { # <name> <ENV VAR of its binary> <image ref>
    local name="$1" bin dir
    bin="$(tool_binary "$2")"
    dir="$(make_context "$name" "$bin")"
    [[ "$(basename "$bin")" == "$name" ]] || mv "$dir/$(basename "$bin")" "$dir/$name"
    docker_build "$name" "$3" --build-arg BASE_IMAGE="$BASE_REF" "$dir"
}

write_images_env() {
    local tmp name ref
    tmp="$(mktemp "$IMAGES_ENV.XXXXXX")"
    {
        echo "# Written by scripts/build-images.sh $(date -u +%FT%TZ); read by scripts/import-images.sh."
        for name in OPERATOR TRAINER MINIO KUEUE PAUSE; do
            ref="${name}_REF"
            echo "DISTILLERY_IMAGE_$name=${!ref}"
            echo "DISTILLERY_IMAGE_${name}_ID=$(docker image inspect -f '{{.Id}}' "${!ref}")"
        done
    } >"$tmp"
    mv "$tmp" "$IMAGES_ENV"
    log "wrote $IMAGES_ENV"
}

main() {
    local total_start name ref
    total_start=$(date +%s)
    ensure_host_packages || die "Debian packages (see above)"
    ensure_dockerd || die "dockerd (see above)"
    mkdir -p "$LOGS"
    build_base
    build_wheelhouse
    serve_wheelhouse
    build_operator
    build_trainer
    build_pause
    build_tool_image minio DISTILLERY_MINIO_BIN "$MINIO_REF"
    build_tool_image kueue DISTILLERY_KUEUE_BIN "$KUEUE_REF"
    write_images_env
    log "summary (build time, size):"
    for name in operator trainer minio kueue pause; do
        ref="${name^^}_REF"
        printf '  %-9s %-42s %4ss  %s\n' "$name" "${!ref}" "${BUILT_SECONDS[$name]}" "$(image_size "${!ref}")" >&2
    done
    log "all images built in $(($(date +%s) - total_start))s"
}

main "$@"
