#!/bin/sh
# Starts a private libvirt daemon (Debian's monolithic libvirtd) for tests and the quickstart.
# Usage: start-libvirtd.sh RUN_DIR [NETNS]
#   RUN_DIR  directory for its config, state, logs and socket (created)
#   NETNS    optional named network namespace (created if missing) to run the daemon in, so the
#            tap devices it creates for guests live there and not on the host
# Prints the connection URI and writes it to RUN_DIR/uri; the daemon's pid is in
# RUN_DIR/libvirtd.pid. Stop it with stop-libvirtd.sh RUN_DIR.
#
# Isolation: the daemon runs in its own mount namespace where /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are bind mounts of RUN_DIR/*, so
# the host's libvirt configuration and state are never read or written, and several daemons
# (e.g. a migration source and target with distinct host UUIDs) can run side by side. Its
# socket is RUN_DIR/sock/libvirt-sock (auth none: keep RUN_DIR private, mode 0700).
# Must run as root (QEMU runs as root, no security driver, no KVM needed: use TCG domains).
set -eu
RUN="$(realpath -m "$1")"
NETNS="${2:-}"
mkdir -p "$RUN"
chmod 0700 "$RUN"
for d in etc run lib log cache sock; do mkdir -p "$RUN/$d"; done
[ -s "$RUN/host_uuid" ] || cat /proc/sys/kernel/random/uuid > "$RUN/host_uuid"

cat > "$RUN/etc/libvirtd.conf" <<CONF
unix_sock_dir = "$RUN/sock"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
host_uuid = "$(cat "$RUN/host_uuid")"
log_outputs = "3:file:$RUN/log/libvirtd.log"
CONF
cat > "$RUN/etc/qemu.conf" <<CONF
user = "root"
group = "root"
security_driver = "none"
stdio_handler = "file"
namespaces = [ ]
CONF

if [ -n "$NETNS" ] && ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
    ip netns exec "$NETNS" ip link set lo up
fi

rm -f "$RUN/libvirtd.pid" "$RUN/sock/libvirt-sock"
INNER="mount --bind '$RUN/etc' /etc/libvirt && mount --bind '$RUN/run' /run/libvirt \
 && mount --bind '$RUN/lib' /var/lib/libvirt && mount --bind '$RUN/log' /var/log/libvirt \
 && mkdir -p /var/cache/libvirt && mount --bind '$RUN/cache' /var/cache/libvirt \
 && exec libvirtd --config '$RUN/etc/libvirtd.conf' --pid-file '$RUN/libvirtd.pid'"
mkdir -p /run/libvirt /var/lib/libvirt /var/log/libvirt
if [ -n "$NETNS" ]; then
    setsid ip netns exec "$NETNS" unshare --mount --propagation private sh -c "$INNER" \
        > "$RUN/daemon.out" 2>&1 < /dev/null &
else
    setsid unshare --mount --propagation private sh -c "$INNER" \
        > "$RUN/daemon.out" 2>&1 < /dev/null &
fi

i=0
while [ ! -S "$RUN/sock/libvirt-sock" ] || [ ! -s "$RUN/libvirtd.pid" ]; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then
        echo "libvirtd did not create its socket in 30 s; see $RUN/daemon.out and $RUN/log/libvirtd.log" >&2
        exit 1
    fi
    sleep 0.1
done
URI="qemu+unix:///system?socket=$RUN/sock/libvirt-sock"
echo "$URI" > "$RUN/uri"
echo "$URI"
