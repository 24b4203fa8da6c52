#!/usr/bin/env bash
# The tests' real single-node cluster (the control plane, kube-scheduler, kubelet, containerd,
# kube-proxy and CoreDNS), kept running so you can try the chart by hand with the images built
# here from the project's Dockerfiles. Needs root (containerd, the kubelet, iptables).
#
#   bash scripts/local-cluster.sh up       # builds what is missing, starts it, prints what to export
#   bash scripts/local-cluster.sh status
#   bash scripts/local-cluster.sh down     # stops it and removes every trace (dockerd keeps running)
#
# `up` sets up what scripts/test.sh sets up (a venv, the pinned binaries, Debian's packages, dockerd,
# the images; all cached, so a second `up` builds nothing) and imports the images into the node.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DISTILLERY_VENV:-.venv}"

if [[ "${1:-}" == up ]]; then
    [[ $(id -u) == 0 ]] || { echo "local-cluster: the node needs root (containerd, kubelet, iptables)" >&2; exit 1; }
    if [[ ! -x "$VENV/bin/python" ]]; then
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --prefer-binary --disable-pip-version-check -e '.[dev]'
    fi
    bash scripts/build-control-plane.sh
    # shellcheck source=lib/host.sh
    source scripts/lib/host.sh
    ensure_host_packages
    ensure_dockerd  # left running: the node imports the images from it
    DISTILLERY_KEEP_DOCKERD=1 PYTHON="$VENV/bin/python" bash scripts/build-images.sh
fi
exec "$VENV/bin/python" -m tests.cluster.local_cluster "$@"
