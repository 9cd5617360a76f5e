#!/usr/bin/env bash
# virtguard quickstart: the whole system on this machine, in about a minute after the build.
#   1. installs what it needs (apt-get when missing; says what to run when not root), builds;
#   2. boots a real tiny Linux guest under QEMU/TCG with a private libvirtd (guest agent, virtio
#      disk with files, tap NIC, balloon) — or, without root/QEMU/libvirt, simulated VMs only;
#   3. starts the simulated cluster in which that guest is VM demo/guest (freeze/thaw reach its
#      real guest agent; its disk is the PVC), plus two simulated VMs;
#   4. starts the exporter (node mode on that libvirt, cluster mode on the cluster) and shows live
#      values;
#   5. runs `virtguard backup --all-namespaces` into the embedded default repository, fetches
#      single files from that backup with `virtguard files get` (no restore), then
#      `virtguard restore` of the real VM as a copy, and checks the restored disk's files; then
#      `virtguard drill`: the backup restored as a copy that boots as a second real QEMU domain,
#      checked through its guest agent and deleted;
#   6. prints a summary and stops everything it started.
# Options are passed to virtguard-quickstart: --keep-running, --no-guest, --work DIR (see --help).
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install-deps.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
echo "==> building virtguard (release)" >&2
cargo build --release -q -p virtguard -p virtguard-exporter -p virtguard-e2e --bins
exec target/release/virtguard-quickstart "$@"
