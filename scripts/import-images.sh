#!/usr/bin/env bash
# Puts the images that scripts/build-images.sh built into a containerd, with no registry:
#
#   bash scripts/import-images.sh /run/containerd/containerd.sock [images.env]
#
# Each image of images.env (default ~/.cache/distillery/images.env) goes into the containerd's
# `k8s.io` namespace (the one the kubelet's CRI uses) under the same fully qualified name, via
# `docker save REF | ctr images import -`. The containerd copy is labelled with the docker image
# ID it came from (distillery.io/docker-id), so an image whose copy is current is skipped.
# Needs a running dockerd (the images live there), the ctr client and python3; prints the time
# per image.
#
# Disk: an import holds the image twice in containerd (the layer blobs and their unpacked
# snapshots), so the trainer's 6 GB of dependencies need about 13 GB free when they change.
# The script checks the free space first (CONTAINERD_ROOT, default /var/lib/containerd, is where
# it looks), drops the old copy first when the new image shares less than half of it, and
# removes the `sha256:<id>` names that the CRI gives every image once no named image is behind
# them (left alone, each keeps an old image's layers for ever).
set -euo pipefail

log() { echo "[import-images] $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

SOCKET="${1:-}"
IMAGES_ENV="${2:-${DISTILLERY_CACHE:-$HOME/.cache/distillery}/images.env}"
NAMESPACE=k8s.io
LABEL=distillery.io/docker-id
CONTAINERD_ROOT="${CONTAINERD_ROOT:-/var/lib/containerd}"
MARGIN_BYTES=$((1024 * 1024 * 1024))  # for containerd's metadata and the node's logs
[[ -n "$SOCKET" ]] || die "usage: $0 <containerd socket> [images.env]"
[[ -S "$SOCKET" ]] || die "$SOCKET is not a socket (is containerd running?)"
[[ -f "$IMAGES_ENV" ]] || die "no $IMAGES_ENV (run scripts/build-images.sh first)"
command -v ctr >/dev/null || die "no ctr client (Debian package containerd)"
command -v python3 >/dev/null || die "no python3 (it reads the image manifests)"
docker info >/dev/null 2>&1 || die "no dockerd answers; the images are in docker (see scripts/lib/host.sh ensure_dockerd)"
ctr_() { ctr --address "$SOCKET" --namespace "$NAMESPACE" "$@"; }
ctr_ version >/dev/null 2>&1 || die "containerd at $SOCKET does not answer ctr version"

# The label value the containerd copy of REF carries, empty when REF is absent or unlabelled.
current_id() { # <ref>
    ctr_ images ls "name==$1" 2>/dev/null | awk -v l="$LABEL=" 'NR > 1 {
        n = split($NF, kv, ","); for (i = 1; i <= n; i++) if (index(kv[i], l) == 1) print substr(kv[i], length(l) + 1) }'
}

# The digest REF points at in containerd; empty when absent.
target_of() { # <ref>
    ctr_ images ls "name==$1" 2>/dev/null | awk 'NR > 1 {print $3}'
}

# "<digest> <bytes>" for every layer of the images that have a name in containerd, once each.
# Images from `docker save` have uncompressed layers, so a digest here is docker's layer diff ID.
named_layers() {
    local manifest
    ctr_ images ls 2>/dev/null | awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}' | sort -u |
        while read -r manifest; do
            ctr_ content get "$manifest" 2>/dev/null | python3 -c '
import json, sys
for layer in json.load(sys.stdin).get("layers", []):
    print(layer["digest"], layer["size"])' || true
        done | sort -u
}

# Bytes of docker image REF's layers that containerd already holds under a named image.
shared_bytes() { # <ref>
    local layers
    layers="$(docker image inspect -f '{{range .RootFS.Layers}}{{println .}}{{end}}' "$1")"
    named_layers | awk -v want="$layers" '
        BEGIN { n = split(want, w, "\n"); for (i = 1; i <= n; i++) if (w[i] != "") keep[w[i]] = 1 }
        ($1 in keep) { s += $2 } END { printf "%.0f\n", s }'
}

# Removes the `sha256:<id>` names pointing at DIGEST when no other name does: the CRI gives each
# image such a name, and it alone would keep a replaced image's layers and snapshots alive.
forget_target() { # <digest>
    local listing ref digest
    listing="$(ctr_ images ls 2>/dev/null | awk 'NR > 1 {print $1, $3}')"
    awk -v d="$1" '$2 == d && $1 !~ /^sha256:/ {named = 1} END {exit !named}' <<<"$listing" && return 0
    while read -r ref digest; do
        [[ "$ref" == sha256:* && "$digest" == "$1" ]] || continue
        ctr_ images rm --sync "$ref" >/dev/null || die "cannot remove $ref (a replaced image's ID) from containerd"
        log "removed $ref, the ID of the image that was replaced"
    done <<<"$listing"
}

gib() { awk -v b="$1" 'BEGIN { printf "%.1f GiB", b / 1073741824 }'; }

# Fails before a long import that cannot fit: NEEDED bytes plus a margin must be free.
check_free_space() { # <ref> <needed bytes>
    local free
    if ! free="$(df --output=avail -B1 "$CONTAINERD_ROOT" 2>/dev/null | awk 'NR == 2 {print $1}')" || [[ -z "$free" ]]; then
        log "$1: cannot read the free space of $CONTAINERD_ROOT (set CONTAINERD_ROOT to the containerd root); not checked"
        return 0
    fi
    if ((free < $2 + MARGIN_BYTES)); then
        die "$1 needs about $(gib $(($2 + MARGIN_BYTES))) free under $CONTAINERD_ROOT (its new layers twice: blobs and unpacked snapshots, plus a margin); only $(gib "$free") is free. Free some disk (docker's build cache, old images) and rerun."
    fi
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
    local size shared old_target
    size="$(docker image inspect -f '{{.Size}}' "$ref")"
    shared="$(shared_bytes "$ref")"
    old_target="$(target_of "$ref")"
    # When the dependencies changed, the old copy would only be garbage after this import; kept
    # through it, the trainer would need its 6 GB four times over (old and new, blobs and
    # snapshots). So it goes first, and the import starts from what other images share.
    if [[ -n "$old_target" ]] && ((2 * shared < size)); then
        log "$ref: the new image shares $(gib "$shared") of $(gib "$size") with the copy in containerd; removing that copy first"
        ctr_ images rm --sync "$ref" >/dev/null || die "cannot remove the old $ref from containerd"
        forget_target "$old_target"
        old_target=""
        shared="$(shared_bytes "$ref")"
    fi
    check_free_space "$ref" $((2 * (size - shared)))
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
    [[ -z "$old_target" ]] || forget_target "$old_target"
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
