#!/usr/bin/env bash
# Benchmark of the virtguard repository (not a test). Compares, in the same run and against the
# same s3s-fs server on 127.0.0.1:
#   * virtguard backup-file, unencrypted and encrypted, full and incremental (5% of chunks changed)
#   * restic (Debian's, always encrypted) backup of the same file, full and incremental
#   * zstd -3 -T0 over the file (compression throughput ceiling)
#   * restore: virtguard restore-file vs restic restore (both checked byte-identical)
#   * peak RSS of every run (/usr/bin/time -v), CPU seconds of the client and of s3s-fs, and
#     the whole machine's busy CPU seconds over each measurement
# RUNS times (each on fresh repositories and a freshly generated image), then prints each
# figure and each issue #17 target ratio as min / median / max over the runs
# (scripts/lib/bench-repo-report.py; a target is met when its worst run meets it).
#
# Usage: scripts/bench-repo.sh [SIZE_MIB]   (default 2048; needs s3s-fs, restic, zstd, python3)
# Env: RUNS=3 measured runs; RSS_MIB=16384 also backs up (encrypted) one image of that size whose
#      zero blocks are holes (the rest, 60%, written data) and prints its peak RSS;
#      WORK=dir for temporary files (default: a new dir under /tmp), KEEP=1 to keep it,
#      VG=path of a prebuilt virtguard binary (default: build target/release/virtguard),
#      INIT_ARGS="--compression-level 1" extra flags for both `virtguard init`s.
set -euo pipefail

SIZE_MIB=${1:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench.XXXXXX)}
mkdir -p "$WORK/tmp"
# restic writes its temporary pack files to $TMPDIR: keep them on the benchmark's file system.
export TMPDIR="$WORK/tmp"
S3S=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
for tool in restic zstd python3 /usr/bin/time "$S3S"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "missing: $tool" >&2; exit 2; }
done

# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
bench_vg

bench_s3s

RUNS=${RUNS:-3}
IMG="$WORK/disk.img"

# CPU seconds: of process $1 (utime + stime), and busy time of the whole machine.
proc_cpu() { awk '{printf "%.2f\n", ($14 + $15) / 100}' "/proc/$1/stat"; }
machine_cpu() { awk '/^cpu / {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8) / 100; exit}' /proc/stat; }

# measure NAME CMD...: wall seconds, client CPU seconds, peak RSS (KiB), s3s-fs CPU seconds and
# the machine's busy CPU seconds into $WORK/NAME.{secs,cpu,rss,s3cpu,allcpu}
measure() {
  local name=$1; shift
  local start end s3a s3b alla allb
  sync
  s3a=$(proc_cpu "$S3PID"); alla=$(machine_cpu)
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  s3b=$(proc_cpu "$S3PID"); allb=$(machine_cpu)
  echo "$end - $start" | bc -l >"$WORK/$name.secs"
  echo "$s3b - $s3a" | bc -l >"$WORK/$name.s3cpu"
  echo "$allb - $alla" | bc -l >"$WORK/$name.allcpu"
  awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/$name.time" >"$WORK/$name.rss"
  awk -F: '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time" >"$WORK/$name.cpu"
  printf '%-28s %7.2f s  %6.2f CPU s (s3s-fs %5.2f, machine %5.2f)  %5d MiB RSS\n' "$name" \
    "$(cat "$WORK/$name.secs")" "$(cat "$WORK/$name.cpu")" "$(cat "$WORK/$name.s3cpu")" \
    "$(cat "$WORK/$name.allcpu")" "$(( $(cat "$WORK/$name.rss") / 1024 ))"
}

VGS=(--s3-endpoint "$EP" --s3-path-style -q)
export RESTIC_PASSWORD=bench-password
repo_bytes() { python3 -c 'import os,sys; print(sum(os.path.getsize(os.path.join(d,f)) for d,_,fs in os.walk(sys.argv[1]) for f in fs))' "$1"; }

for r in $(seq "$RUNS"); do
echo "== run $r of $RUNS: generating ${SIZE_MIB} MiB image (40% zeros, 40% text-like, 20% random; seed 42)"
python3 "$ROOT/scripts/lib/gen-image.py" "$IMG" "$SIZE_MIB" 42
# shellcheck disable=SC2086 # INIT_ARGS is a list of flags
"$VG" init --repo "s3://bench/plain$r" "${VGS[@]}" ${INIT_ARGS:-} >/dev/null
# shellcheck disable=SC2086
VIRTGUARD_KEY=bench-password "$VG" init --repo "s3://bench/enc$r" "${VGS[@]}" ${INIT_ARGS:-} >"$WORK/init_enc.out"
if [ "$r" = 1 ]; then sed 's/^/   /' "$WORK/init_enc.out" | head -1; fi
restic -r "s3:$EP/bench/restic$r" init >/dev/null

measure "zstd_full.$r" zstd -3 -T0 -q -f "$IMG" -o "$WORK/disk.img.zst"
stat -c %s "$WORK/disk.img.zst" >"$WORK/zstd.$r.bytes"
rm -f "$WORK/disk.img.zst"
measure "vg_plain_full.$r" "$VG" backup-file "$IMG" --vm bench/vm --repo "s3://bench/plain$r" "${VGS[@]}" -o json
measure "vg_enc_full.$r" env VIRTGUARD_KEY=bench-password "$VG" backup-file "$IMG" --vm bench/vm --repo "s3://bench/enc$r" "${VGS[@]}" -o json
measure "restic_full.$r" restic -r "s3:$EP/bench/restic$r" backup -q "$IMG"

# The change touches 5% of the 4 MiB chunks of EACH data class (zero, text-like, random; the
# class of chunk i is i % 5 as generated above), 64 random bytes at a random offset in each.
# Stratified because a plain random 5% sample of a few hundred chunks has a very uneven class
# mix: the incompressible chunks (20% of the image, but stored at 4 MiB instead of ~1.5) then
# decide the result (seed 7 at 1 GiB picked 5 of 12 changed chunks from the random class).
python3 - "$IMG" <<'EOF'
import os, random, sys
path = sys.argv[1]
rng = random.Random(7)
n = os.path.getsize(path) // (4 << 20)
classes = {'zero': [i for i in range(n) if i % 5 in (0, 1)],
           'text': [i for i in range(n) if i % 5 in (2, 3)],
           'random': [i for i in range(n) if i % 5 == 4]}
picked = {k: rng.sample(v, max(1, round(len(v) * 0.05))) for k, v in classes.items() if v}
print('   changed 5% of the chunks: ' + ', '.join(f'{len(v)} {k}' for k, v in picked.items())
      + f' = {sum(map(len, picked.values()))} of {n}')
with open(path, 'r+b') as f:
    for i in sorted(i for v in picked.values() for i in v):
        f.seek(i * (4 << 20) + rng.randrange(0, (4 << 20) - 64))
        f.write(rng.randbytes(64))
EOF
repo_bytes "$WORK/s3/bench/enc$r" >"$WORK/enc_before_incr.$r.bytes"
measure "vg_plain_incr.$r" "$VG" backup-file "$IMG" --vm bench/vm --repo "s3://bench/plain$r" "${VGS[@]}" -o json
measure "vg_enc_incr.$r" env VIRTGUARD_KEY=bench-password "$VG" backup-file "$IMG" --vm bench/vm --repo "s3://bench/enc$r" "${VGS[@]}" -o json
repo_bytes "$WORK/s3/bench/enc$r" >"$WORK/enc_after_incr.$r.bytes"
measure "restic_incr.$r" restic -r "s3:$EP/bench/restic$r" backup -q "$IMG"

PLAIN_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/vg_plain_incr.$r.out")
ENC_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/vg_enc_incr.$r.out")
measure "vg_plain_restore.$r" "$VG" restore-file "$PLAIN_ID" disk0 "$WORK/r-plain.img" --repo "s3://bench/plain$r" "${VGS[@]}"
measure "vg_enc_restore.$r" env VIRTGUARD_KEY=bench-password "$VG" restore-file "$ENC_ID" disk0 "$WORK/r-enc.img" --repo "s3://bench/enc$r" "${VGS[@]}"
measure "restic_restore.$r" restic -r "s3:$EP/bench/restic$r" restore latest --target "$WORK/r-restic"
cmp "$IMG" "$WORK/r-plain.img"
cmp "$IMG" "$WORK/r-enc.img"
cmp "$IMG" "$WORK/r-restic$IMG"
echo "   restored images are byte-identical to the source"
# Keep the disk use of one run, whatever RUNS is.
rm -rf "$WORK/r-plain.img" "$WORK/r-enc.img" "$WORK/r-restic" "$WORK/s3/bench/plain$r" \
  "$WORK/s3/bench/enc$r" "$WORK/s3/bench/restic$r"
done

if [ -n "${RSS_MIB:-}" ]; then
  echo "== peak RSS on a ${RSS_MIB} MiB image (zero blocks are holes, the rest written data)"
  python3 "$ROOT/scripts/lib/gen-image.py" "$IMG" "$RSS_MIB" 42 --sparse
  VIRTGUARD_KEY=bench-password "$VG" init --repo s3://bench/big "${VGS[@]}" >/dev/null
  measure vg_enc_big env VIRTGUARD_KEY=bench-password "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/big "${VGS[@]}" -o json
  rm -rf "$WORK/s3/bench/big" "$IMG"
fi

python3 "$ROOT/scripts/lib/bench-repo-report.py" "$WORK" "$SIZE_MIB" "$RUNS"
