#!/usr/bin/env bash
# Benchmark of `virtguard maintain` (not a test) over a repository of N backups (default 200),
# against restic on the same data in the same run. Time ratio: both repositories in local
# directories (restic's prune over s3s-fs fails here: "packs from index missing", an s3s-fs
# listing problem); S3 requests: a third repository, virtguard's, on an s3s-fs on 127.0.0.1.
#   * N backups of a 64 MiB image, one 1 MiB region changed between backups (virtguard
#     backup-file with 1 MiB chunks; restic backup, whose chunks average 1 MiB)
#   * virtguard maintain --keep-last 3 --keep-daily 7 --grace 0s --verify-share 1/7
#     (prune by policy -> gc -> verify the structure of all and the data of a seventh)
#   * restic forget --keep-last 3 --keep-daily 7 --prune, then restic check --read-data-subset 1/7
#     (the same three steps)
# and prints wall and CPU seconds, the ratio restic / virtguard, and virtguard's S3 requests by
# kind (its own count of what it sent): in total and per backup in the repository.
#
# Usage: scripts/bench-maintain.sh [N]   (needs s3s-fs, restic, python3, /usr/bin/time)
# Env: WORK=dir for temporary files, KEEP=1 to keep it, VG=prebuilt virtguard binary (default:
#      build target/release/virtguard).
set -euo pipefail

N=${1:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench-maintain.XXXXXX)}
mkdir -p "$WORK/tmp"
export TMPDIR="$WORK/tmp"
S3S=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
for tool in restic python3 /usr/bin/time "$S3S"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "missing: $tool" >&2; exit 2; }
done
# shellcheck source=lib/bench-common.sh
. "$ROOT/scripts/lib/bench-common.sh"
bench_vg

bench_s3s
export RESTIC_PASSWORD=bench-password
VGS=(--repo s3://bench/vg --s3-endpoint "$EP" --s3-path-style -q)
VGL=(--repo "$WORK/vg-local" -q)
RR=(-r "$WORK/restic" -q)

# measure NAME CMD...: wall and CPU seconds into $WORK/NAME.{secs,cpu}, output in NAME.out
measure() {
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l >"$WORK/$name.secs"
  awk -F: '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.time" >"$WORK/$name.cpu"
  printf '%-22s %8.2f s  %8.2f CPU s\n' "$name" "$(cat "$WORK/$name.secs")" "$(cat "$WORK/$name.cpu")"
}

IMG="$WORK/disk.img"
python3 - "$IMG" <<'PY'
import random, sys
rng = random.Random(42)
with open(sys.argv[1], 'wb') as f:
    for i in range(64):
        f.write(rng.randbytes(1 << 20) if i % 2 else (b'virtguard bench line %d\n' % i) * 40000)
        f.truncate((i + 1) << 20)
PY
"$VG" init "${VGS[@]}" --chunk-size 1MiB >/dev/null
"$VG" init "${VGL[@]}" --chunk-size 1MiB >/dev/null
restic "${RR[@]}" init >/dev/null
echo "== $N backups of a 64 MiB image, 1 MiB changed between them (virtguard and restic)"
for i in $(seq "$N"); do
  python3 - "$IMG" "$i" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[2]))
with open(sys.argv[1], 'r+b') as f:
    f.seek(rng.randrange(64) << 20)
    f.write(rng.randbytes(1 << 20))
PY
  "$VG" backup-file "$IMG" --vm bench/vm "${VGS[@]}" >/dev/null
  "$VG" backup-file "$IMG" --vm bench/vm "${VGL[@]}" >/dev/null
  restic "${RR[@]}" backup "$IMG" >/dev/null
done

echo "== maintenance: prune by policy, gc, verify (structure of all, data of 1/7)"
measure vg_maintain "$VG" maintain --keep-last 3 --keep-daily 7 --grace 0s --verify-share 1/7 -o json "${VGL[@]}"
measure vg_maintain_s3 "$VG" maintain --keep-last 3 --keep-daily 7 --grace 0s --verify-share 1/7 -o json "${VGS[@]}"
measure restic_forget restic "${RR[@]}" forget --keep-last 3 --keep-daily 7 --prune
measure restic_check restic "${RR[@]}" check --read-data-subset 1/7

python3 - "$WORK" "$N" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
r = lambda name, ext: float(open(f'{work}/{name}.{ext}').read())
vg_s, vg_c = r('vg_maintain', 'secs'), r('vg_maintain', 'cpu')
re_s = r('restic_forget', 'secs') + r('restic_check', 'secs')
re_c = r('restic_forget', 'cpu') + r('restic_check', 'cpu')
rep = json.load(open(f'{work}/vg_maintain_s3.out'))
req = rep['requests']
total = sum(req.values())
print(f"local directories: virtguard maintain {vg_s:.2f} s, {vg_c:.2f} CPU s; restic forget --prune + check 1/7 {re_s:.2f} s, {re_c:.2f} CPU s")
print(f"ratio restic / virtguard: {re_s / vg_s:.2f}x wall, {re_c / vg_c:.2f}x CPU")
print(f"pruned {len(rep['prune']['removed'])} of {n} backups, gc deleted {rep['gc']['chunksDeleted']} chunks, "
      f"verify read {rep['verify']['chunksRead']} chunks of {rep['verify']['chunksReferenced']}")
print(f"on s3s-fs: virtguard maintain {r('vg_maintain_s3', 'secs'):.2f} s, {r('vg_maintain_s3', 'cpu'):.2f} CPU s; S3 requests: " + ", ".join(f"{k} {v}" for k, v in req.items())
      + f"; {total} in all = {total / n:.1f} per backup")
print(f"chunk GETs {req['getChunk']} = chunks verify read {rep['verify']['chunksRead']}: "
      + ("the structure check read no chunk data" if req['getChunk'] == rep['verify']['chunksRead'] else "MISMATCH"))
PY
