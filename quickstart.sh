#!/usr/bin/env bash
# virtguard quickstart: installs what it needs, builds the binaries and shows what they do.
# (The full demo — a real guest under libvirt, the simulated cluster, backup and restore — is
# being built; see the issue tracker. This script stays the README's first command.)
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "==> building virtguard (release)" >&2
cargo build --release --workspace --bins
for bin in virtguard virtguard-exporter virtguard-sim; do
  if [ -x "target/release/$bin" ]; then
    echo
    echo "==> $bin --help"
    "target/release/$bin" --help
  fi
done
