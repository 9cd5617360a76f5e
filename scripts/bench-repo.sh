#!/usr/bin/env bash
# Benchmark of the virtguard repository (not a test). Compares, in the same run and against the
# same s3s-fs server on 127.0.0.1:
#   * virtguard backup-file, unencrypted and encrypted, full and incremental (5% of chunks changed)
#   * restic (Debian's, always encrypted) backup of the same file, full and incremental
#   * zstd -3 -T0 over the file (compression throughput ceiling)
#   * restore: virtguard restore-file vs restic restore (both checked byte-identical)
#   * peak RSS of every run (/usr/bin/time -v)
# and prints the ratios the issue's targets are stated in.
#
# Usage: scripts/bench-repo.sh [SIZE_MIB]   (default 2048; needs s3s-fs, restic, zstd, python3)
# Env: WORK=dir for temporary files (default: a new dir under /tmp), KEEP=1 to keep it,
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

IMG="$WORK/disk.img"
echo "== generating ${SIZE_MIB} MiB image (40% zeros, 40% text-like, 20% random; seed 42)"
python3 "$ROOT/scripts/lib/gen-image.py" "$IMG" "$SIZE_MIB" 42

# measure NAME CMD...: wall seconds and peak RSS (KiB) into $WORK/NAME.{secs,rss}
measure() {
  local name=$1; shift
  local start end
  sync
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l >"$WORK/$name.secs"
  awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}' "$WORK/$name.time" >"$WORK/$name.rss"
  awk -F: '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time" >"$WORK/$name.cpu"
  printf '%-28s %8.2f s  %8.2f CPU s  %8d MiB RSS\n' "$name" "$(cat "$WORK/$name.secs")" "$(cat "$WORK/$name.cpu")" \
    "$(( $(cat "$WORK/$name.rss") / 1024 ))"
}

VGS=(--s3-endpoint "$EP" --s3-path-style -q)
export RESTIC_PASSWORD=bench-password
echo "== init"
# shellcheck disable=SC2086 # INIT_ARGS is a list of flags
"$VG" init --repo s3://bench/plain "${VGS[@]}" ${INIT_ARGS:-} >/dev/null
# shellcheck disable=SC2086
VIRTGUARD_KEY=bench-password "$VG" init --repo s3://bench/enc "${VGS[@]}" ${INIT_ARGS:-} >/dev/null
restic -r "s3:$EP/bench/restic" init >/dev/null

echo "== full backup"
measure zstd_full zstd -3 -T0 -q -f "$IMG" -o "$WORK/disk.img.zst"
measure vg_plain_full "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/plain "${VGS[@]}" -o json
measure vg_enc_full env VIRTGUARD_KEY=bench-password "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/enc "${VGS[@]}" -o json
measure restic_full restic -r "s3:$EP/bench/restic" backup -q "$IMG"

# The change touches 5% of the 4 MiB chunks of EACH data class (zero, text-like, random; the
# class of chunk i is i % 5 as generated above), 64 random bytes at a random offset in each.
# Stratified because a plain random 5% sample of a few hundred chunks has a very uneven class
# mix: the incompressible chunks (20% of the image, but stored at 4 MiB instead of ~1.5) then
# decide the result (seed 7 at 1 GiB picked 5 of 12 changed chunks from the random class).
echo "== changing 5% of the 4 MiB chunks (5% of each data class)"
python3 - "$IMG" <<'EOF'
import os, random, sys
path = sys.argv[1]
rng = random.Random(7)
n = os.path.getsize(path) // (4 << 20)
classes = {'zero': [i for i in range(n) if i % 5 in (0, 1)],
           'text': [i for i in range(n) if i % 5 in (2, 3)],
           'random': [i for i in range(n) if i % 5 == 4]}
picked = {k: rng.sample(v, max(1, round(len(v) * 0.05))) for k, v in classes.items() if v}
print('   changed chunks: ' + ', '.join(f'{len(v)} {k}' for k, v in picked.items())
      + f' = {sum(map(len, picked.values()))} of {n}')
with open(path, 'r+b') as f:
    for i in sorted(i for v in picked.values() for i in v):
        f.seek(i * (4 << 20) + rng.randrange(0, (4 << 20) - 64))
        f.write(rng.randbytes(64))
EOF
repo_bytes() { python3 -c 'import os,sys; print(sum(os.path.getsize(os.path.join(d,f)) for d,_,fs in os.walk(sys.argv[1]) for f in fs))' "$1"; }
repo_bytes "$WORK/s3/bench/enc" >"$WORK/enc_before_incr.bytes"
measure vg_plain_incr "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/plain "${VGS[@]}" -o json
measure vg_enc_incr env VIRTGUARD_KEY=bench-password "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/enc "${VGS[@]}" -o json
repo_bytes "$WORK/s3/bench/enc" >"$WORK/enc_after_incr.bytes"
measure restic_incr restic -r "s3:$EP/bench/restic" backup -q "$IMG"

echo "== restore"
PLAIN_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/vg_plain_incr.out")
ENC_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/vg_enc_incr.out")
measure vg_plain_restore "$VG" restore-file "$PLAIN_ID" disk0 "$WORK/r-plain.img" --repo s3://bench/plain "${VGS[@]}"
measure vg_enc_restore env VIRTGUARD_KEY=bench-password "$VG" restore-file "$ENC_ID" disk0 "$WORK/r-enc.img" --repo s3://bench/enc "${VGS[@]}"
measure restic_restore restic -r "s3:$EP/bench/restic" restore latest --target "$WORK/r-restic"
cmp "$IMG" "$WORK/r-plain.img"
cmp "$IMG" "$WORK/r-enc.img"
cmp "$IMG" "$WORK/r-restic$IMG"
echo "restored images are byte-identical to the source"

python3 - "$WORK" "$SIZE_MIB" <<'EOF'
import json, os, sys
w, size_mib = sys.argv[1], int(sys.argv[2])
def secs(n): return float(open(f"{w}/{n}.secs").read())
def rss(n): return int(open(f"{w}/{n}.rss").read()) / 1024
def cpu(n): return float(open(f"{w}/{n}.cpu").read())
def stored(n):
    v = json.load(open(f"{w}/{n}.out"))["volumes"][0]
    return v["bytes_stored"], v["bytes_new"]
mib = size_mib
print()
print(f"image {mib} MiB; throughput = image size / wall time; CPU = user + system of the client process")
print(f"(s3s-fs runs on the same machine; its CPU is not in these figures)")
for n in ["zstd_full", "vg_plain_full", "vg_enc_full", "restic_full", "vg_plain_incr", "vg_enc_incr", "restic_incr",
          "vg_plain_restore", "vg_enc_restore", "restic_restore"]:
    print(f"  {n:<18} {secs(n):7.2f} s  {mib / secs(n):8.1f} MiB/s  CPU {cpu(n):6.2f} s  peak RSS {rss(n):6.0f} MiB")
full_stored, _ = stored("vg_enc_full")
incr_stored, _ = stored("vg_enc_incr")
incr_repo = int(open(f"{w}/enc_after_incr.bytes").read()) - int(open(f"{w}/enc_before_incr.bytes").read())
print()
print("targets (issue 5):")
def line(name, value, target, ok):
    print(f"  {name:<58} {value:>8}   target {target:<8} {'OK' if ok else 'MISSED'}")
r = secs("restic_full") / secs("vg_enc_full")
line("full backup throughput, ours encrypted / restic", f"{r:.2f}x", ">= 2.5x", r >= 2.5)
r = secs("restic_full") / secs("vg_plain_full")
line("full backup throughput, ours unencrypted / restic", f"{r:.2f}x", "(info)", True)
r = secs("zstd_full") / secs("vg_enc_full")
line("full backup throughput, ours encrypted / zstd -3 -T0", f"{100*r:.0f}%", ">= 60%", r >= 0.6)
r = secs("zstd_full") / secs("vg_plain_full")
line("full backup throughput, ours unencrypted / zstd -3 -T0", f"{100*r:.0f}%", ">= 60%", r >= 0.6)
r = incr_stored / full_stored
line("incremental stored bytes / full stored bytes (encrypted)", f"{100*r:.1f}%", "<= 6%", r <= 0.06)
r = incr_repo / full_stored
line("  same, counting every object written (index, manifest)", f"{100*r:.1f}%", "<= 6%", r <= 0.06)
r = secs("vg_enc_full") / secs("vg_enc_incr")
line("incremental speed-up vs full (encrypted)", f"{r:.2f}x", ">= 3x", r >= 3)
r = secs("restic_restore") / secs("vg_enc_restore")
line("restore throughput, ours encrypted / restic", f"{r:.2f}x", ">= 2x", r >= 2)
r = secs("restic_restore") / secs("vg_plain_restore")
line("restore throughput, ours unencrypted / restic", f"{r:.2f}x", "(info)", True)
m = max(rss(n) for n in ["vg_plain_full", "vg_enc_full", "vg_plain_incr", "vg_enc_incr", "vg_plain_restore", "vg_enc_restore"])
line("peak RSS of any virtguard run", f"{m:.0f} MiB", "<= 512", m <= 512)
print(f"  (zstd -3 output {os.path.getsize(w + '/disk.img.zst') / 2**20:.0f} MiB; ours stored {full_stored / 2**20:.0f} MiB)")
print("CPU seconds, restic / ours (load-independent view of the same runs):")
for a, b in [("restic_full", "vg_enc_full"), ("restic_full", "vg_plain_full"), ("restic_restore", "vg_enc_restore"),
             ("restic_restore", "vg_plain_restore")]:
    print(f"  {a} / {b}: {cpu(a) / max(cpu(b), 1e-3):.2f}x")
EOF
