#!/bin/sh
# Stops a daemon started by start-libvirtd.sh: destroys its domains, then terminates it.
# Usage: stop-libvirtd.sh RUN_DIR [NETNS]   (NETNS is deleted when given)
set -u
RUN="$(realpath -m "$1")"
NETNS="${2:-}"
if [ -s "$RUN/uri" ]; then
    for d in $(virsh -c "$(cat "$RUN/uri")" list --name 2>/dev/null); do
        virsh -c "$(cat "$RUN/uri")" destroy "$d" >/dev/null 2>&1 || true
    done
fi
if [ -s "$RUN/libvirtd.pid" ]; then
    pid="$(cat "$RUN/libvirtd.pid")"
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$pid" 2>/dev/null || true
fi
# QEMU processes outlive a daemon that was killed (tests do that): stop them by their pid files.
for f in "$RUN"/run/qemu/*.pid; do
    [ -s "$f" ] || continue
    pid="$(cat "$f")"
    case "$(cat "/proc/$pid/comm" 2>/dev/null)" in
        qemu*) kill -9 "$pid" 2>/dev/null ;;
    esac
done
[ -n "$NETNS" ] && ip netns delete "$NETNS" 2>/dev/null
exit 0
