#!/usr/bin/env bash
# Refreshes reference/ (the upstream API schemas the build and tests read) from local checkouts
# of the upstream repositories. Usage:
#   scripts/refresh-reference.sh KUBEVIRT_CHECKOUT CDI_CHECKOUT EXTERNAL_SNAPSHOTTER_CHECKOUT
# See reference/README.md for what each file is and what to run afterwards.
set -euo pipefail
if [ $# -ne 3 ]; then
    sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
kubevirt=$1 cdi=$2 snapshotter=$3
dest="$(cd "$(dirname "$0")/.." && pwd)/reference"
copy() { # SRC DEST
    if [ ! -f "$1" ]; then
        echo "refresh-reference: $1 not found: is this the right checkout (and a release with that file)?" >&2
        exit 1
    fi
    cp "$1" "$2"
}
copy "$kubevirt/api/openapi-spec/swagger.json" "$dest/kubevirt-openapi.json"
copy "$cdi/api/openapi-spec/swagger.json" "$dest/cdi-openapi.json"
for f in "$dest"/snapshot-crds/*.yaml; do
    copy "$snapshotter/client/config/crd/$(basename "$f")" "$f"
done
for repo in "$kubevirt" "$cdi" "$snapshotter"; do
    printf '%s: %s\n' "$repo" "$(git -C "$repo" log -1 --format='%h (%cs) %d' 2>/dev/null || echo 'not a git checkout')"
done
echo "refresh-reference: copied into $dest; update the table in reference/README.md"
