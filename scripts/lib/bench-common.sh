# Shared by the scripts/bench-*.sh benchmarks (sourced, not run): the binary under test and an
# s3s-fs server on 127.0.0.1 that lives as long as the script.

# Sets VG: the prebuilt binary given in $VG, else a release build of this checkout ($ROOT).
bench_vg() {
  if [ -z "${VG:-}" ]; then
    echo "== building virtguard (release)"
    (cd "$ROOT" && cargo build --release -p virtguard --bin virtguard -q)
    VG="$ROOT/target/release/virtguard"
  fi
}

# Starts s3s-fs ($S3S) over $WORK/s3 with bucket `bench` on a free port; sets PORT, EP and
# S3PID, exports the AWS_* credentials the clients use, and on exit stops the server and removes
# $WORK (unless KEEP=1).
bench_s3s() {
  export AWS_ACCESS_KEY_ID=vgbenchaccess AWS_SECRET_ACCESS_KEY=vgbenchsecret AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/s3/bench"
  "$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
  S3PID=$!
  trap bench_cleanup EXIT
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
  EP="http://127.0.0.1:$PORT"
}

bench_cleanup() {
  kill "$S3PID" 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
