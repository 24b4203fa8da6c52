# Host set-up shared by the image and node scripts (sourced, not run): Debian packages and a
# dockerd that we start only when none answers, and stop only when we started it.
#
#   ensure_host_packages      apt-get install what is missing (root only)
#   ensure_dockerd            a dockerd that answers `docker info`
#   stop_dockerd_if_started   stops the dockerd that ensure_dockerd started, if any
#
# The caller may define log(); otherwise messages go to stderr with a [host] prefix.

DISTILLERY_CACHE="${DISTILLERY_CACHE:-$HOME/.cache/distillery}"
DOCKERD_LOG="$DISTILLERY_CACHE/dockerd.log"
DOCKERD_PID_FILE="$DISTILLERY_CACHE/dockerd.pid"
# Set to the pid by ensure_dockerd when this shell started dockerd; empty otherwise.
DISTILLERY_DOCKERD_STARTED=""

# gcc and libc6-dev compile the static pause binary; openssl makes the test Kueue's serving
# certificate; the rest run the images and the node.
HOST_PACKAGES=(docker.io containerd runc containernetworking-plugins mmdebstrap iptables conntrack
               gcc libc6-dev openssl)

if ! declare -F log >/dev/null; then
    log() { echo "[host] $*" >&2; }
fi

# Installs the packages in HOST_PACKAGES that dpkg does not list as installed.
ensure_host_packages() {
    local missing=() pkg
    for pkg in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]}; installing them needs root (run as root, or apt-get install them first)"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Package lists are only fetched when apt knows no candidate for a missing package.
    if ! apt-cache policy "${missing[@]}" 2>/dev/null | grep -q "Candidate: [0-9]"; then
        log "apt-get update (no package lists for: ${missing[*]})"
        apt-get update -qq || { log "apt-get update failed"; return 1; }
    fi
    log "apt-get install -y ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || { log "apt-get install of ${missing[*]} failed"; return 1; }
}

# Starts dockerd in the background unless one answers already. The data root stays the default
# /var/lib/docker, which persists between runs and so is the layer cache of the image builds.
ensure_dockerd() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "no dockerd answers and starting one needs root"
        return 1
    fi
    mkdir -p "$DISTILLERY_CACHE"
    # A dockerd from a crashed run of ours that no longer answers: stop it by its pid file.
    if [[ -s "$DOCKERD_PID_FILE" ]] && kill -0 "$(cat "$DOCKERD_PID_FILE")" 2>/dev/null; then
        log "stopping an unresponsive dockerd left by a previous run (pid $(cat "$DOCKERD_PID_FILE"))"
        kill "$(cat "$DOCKERD_PID_FILE")" 2>/dev/null || true
        _wait_gone "$(cat "$DOCKERD_PID_FILE")" 30
    fi
    rm -f "$DOCKERD_PID_FILE" /var/run/docker.pid
    log "starting dockerd (log: $DOCKERD_LOG)"
    # No iptables rules and no docker0 bridge: builds use --network host, pods use the CNI.
    nohup dockerd --iptables=false --bridge=none >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local pid=$! i
    echo "$pid" >"$DOCKERD_PID_FILE"
    for i in $(seq 1 60); do
        if docker info >/dev/null 2>&1; then
            DISTILLERY_DOCKERD_STARTED="$pid"
            log "dockerd ready after ${i}s (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 1
    done
    log "dockerd did not answer (pid $pid); last lines of $DOCKERD_LOG:"
    tail -n 30 "$DOCKERD_LOG" >&2
    kill "$pid" 2>/dev/null || true
    rm -f "$DOCKERD_PID_FILE"
    return 1
}

# Stops dockerd only when ensure_dockerd started it in this shell.
stop_dockerd_if_started() {
    [[ -n "$DISTILLERY_DOCKERD_STARTED" ]] || return 0
    log "stopping the dockerd we started (pid $DISTILLERY_DOCKERD_STARTED)"
    kill "$DISTILLERY_DOCKERD_STARTED" 2>/dev/null || true
    _wait_gone "$DISTILLERY_DOCKERD_STARTED" 30 || kill -9 "$DISTILLERY_DOCKERD_STARTED" 2>/dev/null || true
    rm -f "$DOCKERD_PID_FILE"
    DISTILLERY_DOCKERD_STARTED=""
}

_wait_gone() { # <pid> <seconds>
    local i
    for i in $(seq 1 "$2"); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 1
    done
    return 1
}
