#!/usr/bin/env bash
# Benchmark of `virtguard restore` through CDI's upload path (not a test). In one run, on one
# backup of one VM disk (40% zero chunks, 40% text-like, 20% random; seed 42):
#   * virtguard restore-file of the volume to a local sparse file (the repository read ceiling)
#   * virtguard restore of the VM as a copy through the simulated cluster's CDI upload proxy
#     (DataVolume + UploadTokenRequest + zstd stream over HTTPS, sparse write on the far side)
# and prints throughput, the restore / restore-file time ratio (target: restore at most 30%
# slower) and the bytes sent over the wire vs the image size. Both outputs are compared with
# the original image.
#
# Usage: scripts/bench-restore.sh [SIZE_MIB]   (default 2048; needs python3, /usr/bin/time)
# Env: WORK=dir for temporary files (default: a new dir under /tmp), KEEP=1 to keep it,
#      VG / SIM = prebuilt virtguard / virtguard-sim binaries (default: cargo build --release).
set -euo pipefail

SIZE_MIB=${1:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench-restore.XXXXXX)}
mkdir -p "$WORK"
if [ -z "${VG:-}" ] || [ -z "${SIM:-}" ]; then
  echo "== building virtguard and virtguard-sim (release)"
  (cd "$ROOT" && cargo build --release -p virtguard --bin virtguard -p virtguard-sim --bin virtguard-sim -q)
  VG=${VG:-$ROOT/target/release/virtguard}
  SIM=${SIM:-$ROOT/target/release/virtguard-sim}
fi

SIMPID=
cleanup() {
  [ -n "$SIMPID" ] && kill "$SIMPID" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

IMG="$WORK/disk.img"
echo "== generating ${SIZE_MIB} MiB image (40% zeros, 40% text-like, 20% random; seed 42)"
python3 "$ROOT/scripts/lib/gen-image.py" "$IMG" "$SIZE_MIB" 42 --sparse

cat >"$WORK/scenario.yaml" <<EOF
namespaces: [bench, dr]
vms:
  - namespace: bench
    name: vm
    running: false
    disks:
      - {name: root, size: ${SIZE_MIB}Mi, content: {file: $IMG}}
EOF
echo "== starting virtguard-sim"
"$SIM" --scenario "$WORK/scenario.yaml" --state-dir "$WORK/sim" --port 0 >"$WORK/sim.out" 2>"$WORK/sim.log" &
SIMPID=$!
for _ in $(seq 300); do [ -s "$WORK/sim.out" ] && break; sleep 0.1; done
export KUBECONFIG
KUBECONFIG=$(head -1 "$WORK/sim.out")
[ -f "$KUBECONFIG" ] || { echo "virtguard-sim did not start" >&2; cat "$WORK/sim.log" >&2; exit 1; }

# CPU seconds (user + system) a running process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# measure NAME CMD...: wall seconds and peak RSS (KiB) into $WORK/NAME.{secs,rss}; CPU seconds
# of the command and of the sim (the upload proxy decodes and writes) are printed too
measure() {
  local name=$1; shift
  local start end sim0
  sync
  sim0=$(cpu_of "$SIMPID")
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "print($end - $start)" >"$WORK/$name.secs"
  awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/$name.time" >"$WORK/$name.rss"
  awk -F: '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time" >"$WORK/$name.cpu"
  printf '%-28s %8.2f s  %8d MiB RSS   CPU: virtguard %6.2f s, sim %6.2f s\n' "$name" "$(cat "$WORK/$name.secs")" \
    "$(( $(cat "$WORK/$name.rss") / 1024 ))" "$(cat "$WORK/$name.cpu")" "$(echo "$(cpu_of "$SIMPID") - $sim0" | bc -l)"
}

REPO="$WORK/repo"
VGS=(--repo "$REPO" -q)
"$VG" "${VGS[@]}" init >/dev/null
echo "== backup (not measured here; see bench-repo.sh)"
"$VG" "${VGS[@]}" backup --vm bench/vm >"$WORK/backup.out"
ID=$("$VG" "${VGS[@]}" list -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')

echo "== restores of backup $ID"
measure restore-file "$VG" "${VGS[@]}" restore-file "$ID" root "$WORK/out.img"
cmp "$IMG" "$WORK/out.img" || { echo "restore-file output differs" >&2; exit 1; }
measure restore-cdi-upload "$VG" "${VGS[@]}" restore bench/vm@latest --target-namespace dr --name vm-copy
# The new PVC's backing file: the newest volume image of the sim.
NEW=$(ls -t "$WORK"/sim/volumes/*.img | head -1)
cmp "$IMG" "$NEW" || { echo "restored PVC differs from the image" >&2; exit 1; }

WIRE=$(sed -n 's/.* uploaded into DataVolume .* as \([0-9]*\) bytes of zstd.*/\1/p' "$WORK/restore-cdi-upload.err" | head -1)
python3 - "$SIZE_MIB" "$(cat "$WORK/restore-file.secs")" "$(cat "$WORK/restore-cdi-upload.secs")" "$WIRE" <<'EOF'
import sys
size_mib, rf, up, wire = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
size = size_mib << 20
print(f"\n== results ({size_mib} MiB image)")
print(f"restore-file           {size_mib / rf:8.1f} MiB/s")
print(f"restore (cdi-upload)   {size_mib / up:8.1f} MiB/s  ({(up / rf - 1) * 100:+.0f}% time vs restore-file; target <= +30%)")
print(f"bytes on the wire      {wire} = {wire / size * 100:.1f}% of the image ({wire / (1 << 20):.1f} MiB of {size_mib} MiB)")
EOF
