#!/usr/bin/env bash
# Benchmark of the cluster backup path (not a test). In the same run, against the same s3s-fs
# on 127.0.0.1 and the same image:
#   * `virtguard backup --vm bench/vm` through the simulated cluster: freeze, CSI snapshot,
#     thaw, VirtualMachineExport, parallel HTTPS Range reads from the export server
#   * `virtguard backup-file` of the image (the repository path alone: the baseline)
# and prints the export path's overhead (target: <= 1.25x the baseline) and the freeze window
# (freeze -> thaw, target: <= 2 s with the sim's default snapshot delays).
#
# It also prints the CPU seconds of each process (virtguard, the sim, s3s-fs): on a 2-core
# machine the sim's physical point-in-time copies (a real CSI snapshot is metadata-only) and
# its TLS export server compete with virtguard for the same cores, so the wall-time ratio
# mixes virtguard's cost with the simulator's.
#
# Usage: scripts/bench-backup.sh [SIZE_MIB]   (default 2048; needs s3s-fs, python3, bc)
# Env: WORK=dir for temporary files, KEEP=1 to keep it, VG / VGSIM = prebuilt binaries
#      (default: build target/release/{virtguard,virtguard-sim}),
#      SIM_STATE=dir for the sim's PVC and snapshot images (default $WORK/sim; e.g. a
#      directory on /dev/shm makes its snapshot copies memory-speed).
set -euo pipefail

SIZE_MIB=${1:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d /tmp/vg-bench-backup.XXXXXX)}
mkdir -p "$WORK"
S3S=${S3S_FS:-$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")}
for tool in python3 bc "$S3S"; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "$tool" ] || { echo "missing: $tool" >&2; exit 2; }
done
if [ -z "${VG:-}" ] || [ -z "${VGSIM:-}" ]; then
  echo "== building virtguard and virtguard-sim (release)"
  (cd "$ROOT" && cargo build --release -p virtguard -p virtguard-sim --bins -q)
  VG=${VG:-$ROOT/target/release/virtguard}
  VGSIM=${VGSIM:-$ROOT/target/release/virtguard-sim}
fi

export AWS_ACCESS_KEY_ID=vgbenchaccess AWS_SECRET_ACCESS_KEY=vgbenchsecret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
mkdir -p "$WORK/s3/bench"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
S3PID=$!
SIMPID=
cleanup() {
  kill "$S3PID" ${SIMPID:+"$SIMPID"} 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK" ${SIM_STATE:+"$SIM_STATE"}; fi
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
EP="http://127.0.0.1:$PORT"

IMG="$WORK/disk.img"
echo "== generating ${SIZE_MIB} MiB image (40% zeros, 40% text-like, 20% random)"
python3 "$ROOT/scripts/lib/gen-image.py" "$IMG" "$SIZE_MIB"

cat >"$WORK/scenario.yaml" <<YAML
namespaces: [bench]
vms:
  - namespace: bench
    name: vm
    disks:
      - {name: root, size: ${SIZE_MIB}Mi, content: {file: "$IMG"}}
YAML
echo "== starting the simulated cluster"
SIM_STATE=${SIM_STATE:-$WORK/sim}
"$VGSIM" --scenario "$WORK/scenario.yaml" --state-dir "$SIM_STATE" \
  --kubeconfig-out "$WORK/kubeconfig" >"$WORK/sim.log" 2>&1 &
SIMPID=$!
for _ in $(seq 600); do [ -s "$WORK/kubeconfig" ] && break; sleep 0.1; done
export KUBECONFIG="$WORK/kubeconfig"
sleep 1 # the VMI reaches Running

# CPU seconds (user + system) a running process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }

# measure NAME CMD...: wall seconds into $WORK/NAME.secs, output in $WORK/NAME.out, CPU
# seconds of the command, the sim and s3s-fs into $WORK/NAME.{cpu,simcpu,s3cpu}
measure() {
  local name=$1; shift
  local start end sim0 s30
  sync
  sim0=$(cpu_of "$SIMPID"); s30=$(cpu_of "$S3PID")
  start=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || {
    echo "FAILED: $name" >&2; cat "$WORK/$name.err" >&2; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc -l >"$WORK/$name.secs"
  awk '{print $1 + $2}' "$WORK/$name.time" >"$WORK/$name.cpu"
  echo "$(cpu_of "$SIMPID") - $sim0" | bc -l >"$WORK/$name.simcpu"
  echo "$(cpu_of "$S3PID") - $s30" | bc -l >"$WORK/$name.s3cpu"
  printf '%-22s %8.2f s   CPU: virtguard %6.2f s, sim %6.2f s, s3s-fs %6.2f s\n' "$name" \
    "$(cat "$WORK/$name.secs")" "$(cat "$WORK/$name.cpu")" "$(cat "$WORK/$name.simcpu")" "$(cat "$WORK/$name.s3cpu")"
}

VGS=(--s3-endpoint "$EP" --s3-path-style -q)
"$VG" init --repo s3://bench/cluster "${VGS[@]}" >/dev/null
"$VG" init --repo s3://bench/file "${VGS[@]}" >/dev/null
echo "== backups (full, into empty repositories)"
measure backup_file "$VG" backup-file "$IMG" --vm bench/vm --repo s3://bench/file "${VGS[@]}"
measure backup_cluster "$VG" backup --vm bench/vm --repo s3://bench/cluster "${VGS[@]}"

FREEZE=$(awk '$1=="bench/vm" {gsub(/s$/,"",$4); print $4}' "$WORK/backup_cluster.out")
CLUSTER=$(cat "$WORK/backup_cluster.secs")
FILE=$(cat "$WORK/backup_file.secs")
echo
echo "== results (${SIZE_MIB} MiB, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"
printf 'backup through the cluster  %8.2f s  %7.1f MiB/s\n' "$CLUSTER" "$(echo "$SIZE_MIB / $CLUSTER" | bc -l)"
printf 'backup-file (baseline)      %8.2f s  %7.1f MiB/s\n' "$FILE" "$(echo "$SIZE_MIB / $FILE" | bc -l)"
printf 'export path overhead        %8.2fx  (target <= 1.25x; wall time, sim included)\n' "$(echo "$CLUSTER / $FILE" | bc -l)"
printf 'virtguard CPU, cluster / file %6.2fx  (%s s vs %s s: what the export path costs virtguard itself)\n' \
  "$(echo "$(cat "$WORK/backup_cluster.cpu") / $(cat "$WORK/backup_file.cpu")" | bc -l)" \
  "$(cat "$WORK/backup_cluster.cpu")" "$(cat "$WORK/backup_file.cpu")"
printf 'all CPU, cluster / file       %6.2fx  (virtguard + sim + s3s-fs)\n' \
  "$(echo "($(cat "$WORK/backup_cluster.cpu") + $(cat "$WORK/backup_cluster.simcpu") + $(cat "$WORK/backup_cluster.s3cpu")) / ($(cat "$WORK/backup_file.cpu") + $(cat "$WORK/backup_file.simcpu") + $(cat "$WORK/backup_file.s3cpu"))" | bc -l)"
printf 'freeze window               %8.2f s  (target <= 2 s)\n' "${FREEZE:-0}"
