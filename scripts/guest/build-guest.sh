#!/bin/sh
# Builds the tiny test guest used by virtguard's real-VM tests and the quickstart:
#   <cache>/guest/vmlinuz        Debian's amd64 kernel
#   <cache>/guest/initramfs.gz   busybox + virtio/ext4 modules + qemu-ga (from Debian packages)
#   <cache>/guest/data.img       64 MiB ext4 data disk (template; copy it before use)
#   <cache>/guest/busybox        static busybox for the host side of tests (ping, ...)
# Usage: build-guest.sh [CACHE_DIR]   (default: $VIRTGUARD_GUEST_CACHE or ~/.cache/virtguard)
# Idempotent: finished outputs are reused (delete <cache>/guest to rebuild). Needs apt-get
# (download only: nothing is installed on the host), dpkg-deb, mkfs.ext4, gzip. No root needed
# except for what apt-get download needs (none).
#
# Guest boot: the init script mounts proc/sys/dev, loads the modules in dependency order,
# creates /dev/virtio-ports/<name> links (there is no udev), mounts /dev/vda on /mnt when
# present, configures eth0 from the kernel command line (vg.ip=ADDR/PREFIX) and runs qemu-ga on
# org.qemu.guest_agent.0. It writes "VIRTGUARD-GUEST-READY" to the console when done.
set -eu

CACHE="${1:-${VIRTGUARD_GUEST_CACHE:-$HOME/.cache/virtguard}}"
OUT="$CACHE/guest"
mkdir -p "$OUT"
if [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.gz" ] && [ -s "$OUT/data.img" ] && [ -x "$OUT/busybox" ]; then
    echo "guest already built in $OUT"
    exit 0
fi

WORK="$(mktemp -d "$CACHE/build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
DEBS="$CACHE/debs"
mkdir -p "$DEBS"

# The versioned kernel package that linux-image-amd64 points to.
KPKG="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$KPKG" ] || { echo "cannot resolve the kernel package of linux-image-amd64 (run apt-get update)" >&2; exit 1; }

# qemu-guest-agent's shared libraries come from packages that are on any Debian host, except
# these few; we take whatever `ldd` resolves from the host for the rest (same release).
for p in "$KPKG" busybox-static qemu-guest-agent; do
    if ! ls "$DEBS/${p}_"*.deb >/dev/null 2>&1; then
        (cd "$DEBS" && apt-get download "$p" >/dev/null)
    fi
done

for d in "$DEBS"/*.deb; do dpkg-deb -x "$d" "$WORK/x"; done
X="$WORK/x"
KVER="$(ls "$X/lib/modules" | head -n1)"
cp "$X/boot/vmlinuz-$KVER" "$OUT/vmlinuz.tmp"
cp "$X/bin/busybox" "$OUT/busybox.tmp"
chmod +x "$OUT/busybox.tmp"

R="$WORK/root"
mkdir -p "$R/bin" "$R/sbin" "$R/lib/modules" "$R/proc" "$R/sys" "$R/dev" "$R/run" "$R/mnt" "$R/tmp" "$R/etc"
cp "$X/bin/busybox" "$R/bin/busybox"
for app in sh mount umount insmod ls cat echo mkdir ln sleep ip dd sync rm sed grep cut head sh poweroff reboot ping true; do
    ln -sf busybox "$R/bin/$app"
done
cp "$X/usr/sbin/qemu-ga" "$R/sbin/qemu-ga"

# Shared libraries of qemu-ga, resolved on the host (same Debian release as the package).
ldd "$X/usr/sbin/qemu-ga" | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] || continue
    mkdir -p "$R$(dirname "$lib")"
    cp -L "$lib" "$R$lib"
done
# The dynamic loader itself.
for ld in /lib64/ld-linux-x86-64.so.2; do mkdir -p "$R$(dirname $ld)"; cp -L "$ld" "$R$ld"; done

# Kernel modules, in dependency order (from each module's depends= list).
MODS="virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci virtio_blk virtio_console virtio_balloon failover net_failover virtio_net crc32c_generic libcrc32c crc16 mbcache jbd2 ext4"
: > "$R/etc/modules"
for m in $MODS; do
    f="$(find "$X/lib/modules/$KVER" -name "$m.ko*" | head -n1)"
    [ -n "$f" ] || continue   # built into this kernel
    case "$f" in
        *.xz) xz -dc "$f" > "$R/lib/modules/$m.ko" ;;
        *.zst) zstd -qdc "$f" > "$R/lib/modules/$m.ko" ;;
        *) cp "$f" "$R/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$R/etc/modules"
done

cat > "$R/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko 2>/dev/null; done
sleep 1
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] && ln -sf "/dev/$(basename "$p")" "/dev/virtio-ports/$(cat "$p/name")"
done
[ -b /dev/vda ] && mount -t ext4 /dev/vda /mnt
ip link set lo up
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vg.ip=*) ip link set eth0 up; ip addr add "${arg#vg.ip=}" dev eth0 ;;
    esac
done
echo "VIRTGUARD-GUEST-READY" > /dev/console
while true; do
    qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run
    sleep 1
done
INIT
chmod +x "$R/init"

(cd "$R" && find . | "$X/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -1 > "$OUT/initramfs.gz.tmp")

truncate -s 64M "$OUT/data.img.tmp"
mkfs.ext4 -q -F -L vgdata "$OUT/data.img.tmp"

mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
mv "$OUT/busybox.tmp" "$OUT/busybox"
mv "$OUT/initramfs.gz.tmp" "$OUT/initramfs.gz"
mv "$OUT/data.img.tmp" "$OUT/data.img"
echo "guest built in $OUT (kernel $KVER)"
