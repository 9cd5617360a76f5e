#!/usr/bin/env bash
# Benchmark of file-level restore (not a test). In the same run, against the same s3s-fs server
# on 127.0.0.1 and an encrypted repository:
#   * `virtguard files get` of one 10 MiB file out of a big ext4 image
#   * `virtguard restore-file` of the whole image
# and prints wall time, CPU seconds and the chunks (and their bytes) each read from the store,
# with the ratios the issue's targets are stated in (<= 1% of the chunks, >= 50x faster).
#
# The image: SIZE_MIB MiB of ext4 (mkfs.ext4 -d), about half of it filled with files of random
# data (64 MiB each), plus the 10 MiB file fetched and a few small ones.
#
# Usage: scripts/bench-files.sh [SIZE_MIB]   (default 3072; needs s3s-fs, mkfs.ext4, python3)
# Env: WORK=dir for temporary files (default: a new dir under /tmp), KEEP=1 to keep it,
#      VG=path of a prebuilt virtguard binary (default: build target/release/virtguard).
set -euo pipefail

SIZE_MIB=${1:-3072}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench-files.XXXXXX)}
S3S=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
MKFS=$(command -v mkfs.ext4 || echo /usr/sbin/mkfs.ext4)
for tool in python3 /usr/bin/time "$S3S" "$MKFS"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "missing: $tool" >&2; exit 2; }
done

# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
bench_vg

bench_s3s
export VIRTGUARD_REPO=s3://bench/files VIRTGUARD_S3_ENDPOINT="http://127.0.0.1:$PORT" VIRTGUARD_S3_PATH_STYLE=true
export VIRTGUARD_KEY=bench-password

echo "== building a ${SIZE_MIB} MiB ext4 image (half random-data files, one 10 MiB target)"
SRC="$WORK/src"
mkdir -p "$SRC/home/user/docs" "$SRC/var/lib/data" "$SRC/etc"
echo guest >"$SRC/etc/hostname"
head -c $((10 << 20)) /dev/urandom >"$SRC/home/user/docs/report.bin"
FILL=$((SIZE_MIB / 2 / 64))
for i in $(seq 1 "$FILL"); do head -c $((64 << 20)) /dev/urandom >"$SRC/var/lib/data/blob$i.bin"; done
IMG="$WORK/disk.img"
"$MKFS" -q -F -t ext4 -O metadata_csum,64bit -d "$SRC" "$IMG" "${SIZE_MIB}M"
rm -rf "$SRC/var"

# measure NAME CMD...: wall seconds and CPU seconds into $WORK/NAME.{secs,cpu}
measure() {
  local name=$1; shift
  local start end
  sync
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l >"$WORK/$name.secs"
  awk -F: '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time" >"$WORK/$name.cpu"
  printf '%-22s %8.2f s  %8.2f CPU s\n' "$name" "$(cat "$WORK/$name.secs")" "$(cat "$WORK/$name.cpu")"
}

echo "== backup (encrypted, s3s-fs)"
"$VG" init -q >/dev/null
measure backup "$VG" backup-file "$IMG" --vm bench/vm --volume root -q -o json

echo "== fetch one 10 MiB file vs restore the whole image"
measure files_get "$VG" files get bench/vm@latest root /home/user/docs/report.bin -o "$WORK/report.bin" -q
ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/backup.out")
measure restore_file "$VG" restore-file "bench/vm/$ID" root "$WORK/restored.img" -q
cmp "$WORK/report.bin" "$SRC/home/user/docs/report.bin"
cmp "$WORK/restored.img" "$IMG"

python3 - "$WORK" <<'EOF'
import json, re, sys
w = sys.argv[1]
secs = lambda n: float(open(f"{w}/{n}.secs").read())
cpu = lambda n: float(open(f"{w}/{n}.cpu").read())
err = open(f"{w}/files_get.err").read()
m = re.search(r"read (\d+) of (\d+) chunk\(s\) \(([^)]*)\)", err)
got, total, got_bytes = int(m.group(1)), int(m.group(2)), m.group(3)
b = json.load(open(f"{w}/backup.out"))
vol = b["volumes"][0] if "volumes" in b else b
zero = vol.get("zero_chunks", 0)
stored = total - zero
print()
print(f"image: {vol.get('size', 0) / 2**20:.0f} MiB, {total} chunks, {stored} non-zero (restore-file reads all of those)")
print(f"files get:    {secs('files_get'):7.2f} s ({cpu('files_get'):.2f} CPU s), {got} chunks ({got_bytes}) from the store")
print(f"restore-file: {secs('restore_file'):7.2f} s ({cpu('restore_file'):.2f} CPU s), {stored} chunks")
print(f"chunks fetched: {100 * got / max(stored, 1):.2f}% of restore-file's (target <= 1%)")
print(f"speed-up: {secs('restore_file') / secs('files_get'):.1f}x wall, {cpu('restore_file') / max(cpu('files_get'), 1e-3):.1f}x CPU (target >= 50x)")
EOF
