#!/usr/bin/env bash
# Builds the real Kubernetes control plane the integration tests run against -- etcd,
# kube-apiserver, kube-controller-manager, kubectl -- plus helm, and the real node's parts --
# kube-scheduler, kubelet, kube-proxy, CoreDNS -- from the pinned Go wrapper modules under
# tools/{etcd,k8s,helm,coredns}/ with the plain `go` client, and caches the binaries
# outside the repo (same layout as scripts/setup-test-tools.sh):
#
#   ${DISTILLERY_TOOLS_DIR:-$HOME/.cache/distillery/tools}/<tool>-<version>/bin/<tool>
#
# A binary already in the cache is not rebuilt, so a warm run is instant. The resolved paths
# are written to ${DISTILLERY_TOOLS_DIR}/control-plane.env as KEY=VALUE lines
# (DISTILLERY_ETCD_BIN, DISTILLERY_KUBE_APISERVER_BIN, DISTILLERY_KUBE_CONTROLLER_MANAGER_BIN,
# DISTILLERY_KUBECTL_BIN, DISTILLERY_HELM_BIN, DISTILLERY_KUBE_SCHEDULER_BIN,
# DISTILLERY_KUBELET_BIN, DISTILLERY_KUBE_PROXY_BIN, DISTILLERY_COREDNS_BIN);
# `set -a; . control-plane.env` loads them.
#
# Usage: scripts/build-control-plane.sh [tool...]   (default: all nine)
# A cold build takes 20-50 minutes on 2 cores (about 2 GiB RSS per compile); builds run under
# `nice -n 19` with Go's default parallelism (one package per core: nothing else runs while the
# README's test command builds); GO_BUILD_JOBS=1 builds one package at a time instead.
# Any failure exits non-zero with the reason.
set -euo pipefail

# shellcheck source=lib/go-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/go-tools.sh"
: "${GO_BUILD_JOBS=}"  # empty: go build's default -p
ENV_FILE="$TOOLS_DIR/control-plane.env"
# The node's tools come last, so the control plane the other tests need is ready first.
ALL_TOOLS=(etcd kube-apiserver kube-controller-manager kubectl helm kube-scheduler kubelet kube-proxy coredns)

log() { echo "[build-control-plane] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

K8S_VERSION="$(pinned_version tools/k8s k8s.io/kubernetes)"
ETCD_VERSION="$(pinned_version tools/etcd go.etcd.io/etcd/server/v3)"
HELM_VERSION="$(pinned_version tools/helm helm.sh/helm/v3)"
COREDNS_VERSION="$(pinned_version tools/coredns github.com/coredns/coredns)"
[[ -n "$K8S_VERSION" ]] || die "tools/k8s/go.mod does not require k8s.io/kubernetes"
[[ -n "$ETCD_VERSION" ]] || die "tools/etcd/go.mod does not require go.etcd.io/etcd/server/v3"
[[ -n "$HELM_VERSION" ]] || die "tools/helm/go.mod does not require helm.sh/helm/v3"
[[ -n "$COREDNS_VERSION" ]] || die "tools/coredns/go.mod does not require github.com/coredns/coredns"

# v1.34.4 -> major 1, minor 34; the staging modules must all be replaced with v0.34.4.
IFS=. read -r K8S_MAJOR K8S_MINOR _ <<<"${K8S_VERSION#v}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
bad_replaces="$(awk -v v="$STAGING_VERSION" '$1 ~ /^k8s\.io\// && $2 == "=>" && $4 != v {print $1 " => " $3 " " $4}' \
    "$REPO_ROOT/tools/k8s/go.mod")"
[[ -z "$bad_replaces" ]] ||
    die "tools/k8s/go.mod: staging replaces must point at $STAGING_VERSION for k8s.io/kubernetes $K8S_VERSION: $bad_replaces"

# Version stamps, so /version and `kubectl version` report the real release, not v0.0.0.
k8s_ldflags() {
    local pkg out=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        out+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$K8S_MAJOR -X $pkg.gitMinor=$K8S_MINOR"
        out+=" -X $pkg.gitTreeState=clean"
    done
    echo "$out"
}
# helm's default .Capabilities.KubeVersion (used by `helm template`/lint without a cluster) is
# set to the control plane's release instead of helm's built-in v1.20.
helm_ldflags() {
    local pkg out="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    out+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        out+=" -X $pkg.k8sVersionMajor=$K8S_MAJOR -X $pkg.k8sVersionMinor=$K8S_MINOR"
    done
    echo "$out"
}

# Per tool: <module dir> <version> <package> <build tags> <extra ldflags> <env var>
tool_spec() { # <tool>
    case "$1" in
    etcd) SPEC=(tools/etcd "$ETCD_VERSION" . "" "" DISTILLERY_ETCD_BIN) ;;
    kube-apiserver | kube-controller-manager | kubectl | kube-scheduler | kubelet | kube-proxy)
        local var="DISTILLERY_$(tr 'a-z-' 'A-Z_' <<<"$1")_BIN"
        SPEC=(tools/k8s "$K8S_VERSION" "k8s.io/kubernetes/cmd/$1" "selinux,notest,grpcnotrace" "$(k8s_ldflags)" "$var")
        ;;
    helm) SPEC=(tools/helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "" "$(helm_ldflags)" DISTILLERY_HELM_BIN) ;;
    # CoreDNS's version is a constant in its source; GitCommit names the release we pinned.
    coredns) SPEC=(tools/coredns "$COREDNS_VERSION" . "" "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" DISTILLERY_COREDNS_BIN) ;;
    *) die "unknown tool '$1' (known: ${ALL_TOOLS[*]})" ;;
    esac
}

# Builds one tool into the cache unless it is already there; sets BIN to its path.
build_tool() { # <tool>
    tool_spec "$1"
    BIN="$(go_build_cached "$1" "${SPEC[0]}" "${SPEC[1]}" "${SPEC[2]}" "${SPEC[3]}" "${SPEC[4]}")" ||
        die "cannot build $1"
}

# Sets KEY=VALUE in control-plane.env, keeping the other lines.
record_env() { # <VAR> <value>
    local tmp
    tmp="$(mktemp "$ENV_FILE.XXXXXX")"
    { grep -v -E "^$1=" "$ENV_FILE" 2>/dev/null || true; } >"$tmp"
    echo "$1=$2" >>"$tmp"
    mv "$tmp" "$ENV_FILE"
}

main() {
    local tools=("$@") tool total_start
    [[ ${#tools[@]} -gt 0 ]] || tools=("${ALL_TOOLS[@]}")
    for tool in "${tools[@]}"; do tool_spec "$tool"; done # validate names before building
    mkdir -p "$TOOLS_DIR"
    total_start=$(date +%s)
    for tool in "${tools[@]}"; do
        build_tool "$tool"
        tool_spec "$tool"
        record_env "${SPEC[5]}" "$BIN"
    done
    go_caches_remove
    log "done in $(($(date +%s) - total_start))s; tool paths in $ENV_FILE:"
    cat "$ENV_FILE" >&2
}

main "$@"
