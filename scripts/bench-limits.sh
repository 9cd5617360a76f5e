#!/usr/bin/env bash
# Benchmark of the bandwidth limits (not a test): against an s3s-fs server on 127.0.0.1, with
# LIMIT bytes/s (default 16MiB), prints the achieved rate of
#   * backup-file of SIZE MiB (default 128) of incompressible data with --limit-upload
#     (bytes stored / wall time of the whole command)
#   * restore-file of that backup with --limit-download (bytes read / wall time)
#   * backup-file of SIZE MiB of zeros (nothing to upload) with --limit-read (bytes read / wall)
# and, for scale, the same three without a limit; each limited rate should be within ±10% of LIMIT.
#
# Usage: scripts/bench-limits.sh [SIZE_MIB] [LIMIT]   (needs s3s-fs, python3)
# Env: WORK, KEEP=1, VG=prebuilt virtguard binary (default: build target/release/virtguard).
set -euo pipefail
SIZE_MIB=${1:-128}
LIMIT=${2:-16MiB}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench-limits.XXXXXX)}
S3S=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
bench_vg
bench_s3s
VGS=(--s3-endpoint "http://127.0.0.1:$PORT" --s3-path-style -q)
python3 -c "import os,sys; open(sys.argv[1],'wb').write(os.urandom(int(sys.argv[2])<<20))" "$WORK/random.img" "$SIZE_MIB"
truncate -s "${SIZE_MIB}M" "$WORK/zeros.img"
LIMIT_BYTES=$(python3 -c "
import re,sys
m=re.fullmatch(r'(\d+)(KiB|MiB|GiB)?', sys.argv[1]); n=int(m.group(1))
print(n << {None:0,'KiB':10,'MiB':20,'GiB':30}[m.group(2)])" "$LIMIT")

# timed NAME BYTES CMD...: prints the rate of BYTES over the command's wall time
timed() {
  local name=$1 bytes=$2; shift 2
  local start end
  start=$(date +%s.%N)
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || { echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "
import sys
name, b, s, lim = sys.argv[1], int(sys.argv[2]), float(sys.argv[4]) - float(sys.argv[3]), int(sys.argv[5])
rate = b / s
dev = (rate / lim - 1) * 100
print(f'{name:<20} {s:7.2f} s  {rate / 2**20:8.2f} MiB/s' + (f'  ({dev:+.1f}% of the limit)' if name.endswith('-limited') else ''))
" "$name" "$bytes" "$start" "$end" "$LIMIT_BYTES"
}
SIZE=$((SIZE_MIB << 20))
for mode in unlimited limited; do
  repo="s3://bench/$mode"
  "$VG" init --repo "$repo" "${VGS[@]}" >/dev/null
  up=(); down=(); rd=()
  if [ "$mode" = limited ]; then up=(--limit-upload "$LIMIT"); down=(--limit-download "$LIMIT"); rd=(--limit-read "$LIMIT"); fi
  timed "upload-$mode" "$SIZE" "$VG" backup-file "$WORK/random.img" --vm bench/up --repo "$repo" "${VGS[@]}" "${up[@]}" -o json
  id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/upload-$mode.out")
  timed "download-$mode" "$SIZE" "$VG" restore-file "$id" disk0 "$WORK/out-$mode.img" --force --repo "$repo" "${VGS[@]}" "${down[@]}"
  timed "read-$mode" "$SIZE" "$VG" backup-file "$WORK/zeros.img" --vm bench/read --repo "$repo" "${VGS[@]}" "${rd[@]}"
  cmp "$WORK/out-$mode.img" "$WORK/random.img"
done
