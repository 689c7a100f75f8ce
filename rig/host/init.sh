#!/bin/sh
# /init of ember's virtual KVM host (busybox sh). Mounts the basics, runs every scenario in
# /rig/scenarios in name order, then reboots (QEMU exits: -no-reboot).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup /run /tmp /var/tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
[ -e /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
hostname -F /etc/hostname
ip link set lo up 2>/dev/null
echo "=== RIG HOST UP kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) kvm=$([ -c /dev/kvm ] && echo yes || echo no) uptime=$(cut -d' ' -f1 /proc/uptime)"
for s in /rig/scenarios/*; do
    [ -f "$s" ] || continue
    echo "=== RIG SCENARIO ${s##*/}"
    ( cd /tmp && . /rig/lib.sh && . "$s" ) </dev/null 2>&1
done
echo "=== RIG DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
reboot -f
sleep 5
echo "=== RIG reboot -f did not stop the host"
