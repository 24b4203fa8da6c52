#!/usr/bin/env bash
# Puts the images that scripts/build-images.sh built into a containerd, with no registry:
#
#   bash scripts/import-images.sh /run/containerd/containerd.sock [images.env]
#
# Each image of images.env (default ~/.cache/distillery/images.env) goes into the containerd's
# `k8s.io` namespace (the one the kubelet's CRI uses) under the same fully qualified name, via
# `docker save REF | ctr images import -`. The containerd copy is labelled with the docker image
# ID it came from (distillery.io/docker-id), so an image whose copy is current is skipped.
# Needs a running dockerd (the images live there) and the ctr client; prints the time per image.
set -euo pipefail

log() { echo "[import-images] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

SOCKET="${1:-}"
IMAGES_ENV="${2:-${DISTILLERY_CACHE:-$HOME/.cache/distillery}/images.env}"
NAMESPACE=k8s.io
LABEL=distillery.io/docker-id
[[ -n "$SOCKET" ]] || die "usage: $0 <containerd socket> [images.env]"
[[ -S "$SOCKET" ]] || die "$SOCKET is not a socket (is containerd running?)"
[[ -f "$IMAGES_ENV" ]] || die "no $IMAGES_ENV (run scripts/build-images.sh first)"
command -v ctr >/dev/null || die "no ctr client (Debian package containerd)"
docker info >/dev/null 2>&1 || die "no dockerd answers; the images are in docker (see scripts/lib/host.sh ensure_dockerd)"
ctr_() { ctr --address "$SOCKET" --namespace "$NAMESPACE" "$@"; }
ctr_ version >/dev/null 2>&1 || die "containerd at $SOCKET does not answer ctr version"

# The label value the containerd copy of REF carries, empty when REF is absent or unlabelled.
current_id() { # <ref>
    ctr_ images ls "name==$1" 2>/dev/null | awk -v l="$LABEL=" 'NR > 1 {
        n = split($NF, kv, ","); for (i = 1; i <= n; i++) if (index(kv[i], l) == 1) print substr(kv[i], length(l) + 1) }'
}

import_one() { # <ref> <docker image id>
    local ref="$1" id="$2" start out
    start=$(date +%s)
    if [[ "$(current_id "$ref")" == "$id" ]]; then
        log "$ref: current in containerd ($id), skipped"
        return 0
    fi
    docker image inspect "$ref" >/dev/null 2>&1 || die "$ref is not in docker (rerun scripts/build-images.sh)"
    [[ "$(docker image inspect -f '{{.Id}}' "$ref")" == "$id" ]] \
        || die "$ref in docker is not the image $IMAGES_ENV names ($id); rerun scripts/build-images.sh"
    # docker save writes a docker-archive; ctr imports it and unpacks it into the default
    # snapshotter (overlayfs), the one the CRI plugin runs containers from. It goes in under a
    # staging name first: replacing REF at once would leave the layers it shares with the old
    # image (the trainer's 6 GB of dependencies) unreferenced while they are reused, and
    # containerd's garbage collector removes them mid-unpack ("parent snapshot ... does not exist").
    local staging="${ref%:*}:import-${id#sha256:}"
    docker tag "$ref" "$staging" || die "cannot tag $ref as $staging in docker"
    if ! out="$(set -o pipefail; docker save "$staging" | ctr_ images import - 2>&1)"; then
        docker rmi "$staging" >/dev/null 2>&1 || true
        ctr_ images rm "$staging" >/dev/null 2>&1 || true
        die "importing $ref into $SOCKET: $out"
    fi
    docker rmi "$staging" >/dev/null || die "cannot remove the staging tag $staging from docker"
    ctr_ images ls -q "name==$staging" | grep -qx "$staging" || die "$staging is not in containerd after the import: $out"
    ctr_ images tag --force "$staging" "$ref" >/dev/null || die "cannot tag $staging as $ref in containerd"
    ctr_ images rm "$staging" >/dev/null || die "cannot remove the staging name $staging from containerd"
    ctr_ images label "$ref" "$LABEL=$id" >/dev/null || die "cannot label $ref in containerd"
    log "$ref: imported in $(($(date +%s) - start))s"
}

main() {
    local name ref id total_start
    total_start=$(date +%s)
    # Every DISTILLERY_IMAGE_<NAME>=ref line with its DISTILLERY_IMAGE_<NAME>_ID=id line.
    while IFS='=' read -r name ref; do
        [[ "$name" =~ ^DISTILLERY_IMAGE_[A-Z]+$ ]] || continue
        id="$(sed -n "s/^${name}_ID=//p" "$IMAGES_ENV")"
        [[ -n "$id" ]] || die "$IMAGES_ENV has $name but no ${name}_ID"
        import_one "$ref" "$id"
    done <"$IMAGES_ENV"
    log "done in $(($(date +%s) - total_start))s"
}

main "$@"
