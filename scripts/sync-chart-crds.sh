#!/usr/bin/env bash
# Copy the generated CRDs (crds/, the single source, written by `distillery crds`) into the Helm
# chart's crds/ folder, byte for byte. tests/chart/test_chart.py fails when the two differ.
#   bash scripts/sync-chart-crds.sh           copy
#   bash scripts/sync-chart-crds.sh --check   exit 1 (and list the files) when out of sync
set -euo pipefail
cd "$(dirname "$0")/.."

src=crds
dst=charts/distillery/crds
check=0
[[ "${1:-}" == "--check" ]] && check=1

stale=()
for f in "$src"/*.yaml; do
    name=$(basename "$f")
    if ! cmp -s "$f" "$dst/$name"; then
        stale+=("$dst/$name")
        [[ $check == 1 ]] || cp "$f" "$dst/$name"
    fi
done
# CRDs the chart carries that crds/ no longer has
for f in "$dst"/*.yaml; do
    [[ -e "$f" ]] || continue
    name=$(basename "$f")
    if [[ ! -e "$src/$name" ]]; then
        stale+=("$f (removed from crds/)")
        [[ $check == 1 ]] || rm -f "$f"
    fi
done

if [[ ${#stale[@]} -eq 0 ]]; then
    echo "chart CRDs are in sync with crds/"
elif [[ $check == 1 ]]; then
    printf 'out of sync: %s\n' "${stale[@]}"
    echo "run scripts/sync-chart-crds.sh"
    exit 1
else
    printf 'updated: %s\n' "${stale[@]}"
fi
