# 20-devices: ember's virtio devices seen from a real guest, inside the virtual KVM host.
# Sourced by the host's /init after /rig/lib.sh (busybox sh).
#
# Guests run them: ember vm run with the default guest image plus a small overlay cpio
# whose /devtest.sh (rdinit=) exercises virtio-blk (read-write ext4 disk, read-only disk),
# virtio-vsock (echo both ways, data checked), virtio-rng (/dev/hwrng) and virtio-net (a TAP
# in this host, ping), printing `devtest <name>: ...` lines; the host then checks the disks
# after the VM exited and turns each part into a section.
# The device-test kit comes inside the default guest initramfs (scripts/build-guest-image.sh):
# /usr/local/bin/io-bench (static, echo client/server) and /usr/share/ember/devtest.ext4.gz
# (made with mkfs.ext4 -d on the build machine).
# Sections: devices-setup, devices-boot (guest A: disks + vsock), devices-boot-rng-net
# (guest B, which also posts malformed chains to its rng device from user space), devices-blk,
# devices-blk-ro, devices-vsock, devices-rng, devices-bad-descriptor, devices-net,
# devices-all-bound (one guest with all five devices: each must get its driver).

DT=/tmp/devtest
DT_GUEST_CPIO=${DEVTEST_GUEST_CPIO:-/var/lib/ember/guest/initramfs.cpio}
DT_TAP=devtap0
DT_HOST_IP=172.31.77.1
DT_GUEST_IP=172.31.77.2
DT_ECHO_BYTES=262144
DT_TOKEN=""
DT_NET=0
DT_PID=""
# Extra guest kernel command line (e.g. loglevel=6 to see how far a silent boot got).
DT_APPEND=${DEVTEST_APPEND:-loglevel=6}

# The guest's /devtest.sh (@TOKEN@, @NET@, @HOST_IP@, @GUEST_IP@, @BYTES@ filled in below).
devtest_guest_script() {
    cat <<'GUEST'
#!/bin/sh
export PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /tmp /mnt/rw /mnt/ro
# Boot timer (0xd0000000): 1 = /init started, so ember's --timings show the guest got here.
devmem 0xd0000000 8 1
echo "devtest begin"

# part NAME FUNC: runs FUNC, prefixing its output with `devtest NAME:`, then `devtest NAME: rc=N`.
part() {
    _n=$1
    shift
    "$@" >/tmp/part.out 2>&1
    _rc=$?
    sed "s/^/devtest $_n: /" /tmp/part.out
    echo "devtest $_n: rc=$_rc"
    # Guest uptime after each part: where the time went when a guest is slow.
    echo "devtest time: $_n done at $(cut -d' ' -f1 /proc/uptime) s"
}

blk_rw() {
    [ -b /dev/vda ] || { echo "no /dev/vda"; return 1; }
    echo "vda size_sectors=$(cat /sys/block/vda/size) ro=$(cat /sys/block/vda/ro)"
    mount -t ext4 /dev/vda /mnt/rw || return 1
    _h=$(cat /mnt/rw/data/hello.txt) || return 1
    echo "image file: $_h"
    echo "@TOKEN@" >/mnt/rw/data/written.txt || return 1
    sync
    umount /mnt/rw || return 1
    mount -t ext4 -o ro /dev/vda /mnt/rw || return 1
    echo "reread after remount: $(cat /mnt/rw/data/written.txt)"
    grep -q "@TOKEN@" /mnt/rw/data/written.txt || return 1
    umount /mnt/rw
}

blk_ro() {
    [ -b /dev/vdb ] || { echo "no /dev/vdb"; return 1; }
    _ro=$(cat /sys/block/vdb/ro)
    echo "vdb ro=$_ro"
    [ "$_ro" = 1 ] || return 1
    if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>&1; then
        echo "raw write to /dev/vdb succeeded"
        return 1
    fi
    echo "raw write refused"
    mount -t ext4 -o ro /dev/vdb /mnt/ro || return 1
    _h=$(cat /mnt/ro/data/hello.txt) || return 1
    echo "read from ro disk: $_h"
    if touch /mnt/ro/data/new.txt 2>&1; then
        echo "file created on the ro disk"
        return 1
    fi
    echo "file creation refused"
    umount /mnt/ro
}

rng() {
    echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
    [ -c /dev/hwrng ] || { echo "no /dev/hwrng"; return 1; }
    _a=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')
    _b=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')
    echo "read 1: $_a"
    echo "read 2: $_b"
    [ "${#_a}" -eq 64 ] && [ "${#_b}" -eq 64 ] || { echo "short read"; return 1; }
    [ "$_a" != "$_b" ] || { echo "two reads returned the same bytes"; return 1; }
    echo "two 32-byte reads differ"
}

# A misbehaving driver: io-bench takes the rng device from the kernel's driver and posts
# malformed chains itself (virtq.rs); the device answers each (or stops the queue) and the
# host finds its warnings in ember's log. Then the kernel's driver, bound again to the reset
# device, reads from it.
badq() {
    io-bench virtq-bad --device-id 4 || return 1
    sleep 1
    echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"
    _c=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \n')
    echo "hwrng after the driver was bound again: $_c"
    [ "${#_c}" -eq 64 ]
}

vsock_to_host() {
    io-bench vsock-echo --cid 2 --port 5002 --bytes @BYTES@ --wait-s 60
}

net() {
    [ "@NET@" = 1 ] || { echo "skipped: the host has no TAP for this VM"; return 0; }
    [ -e /sys/class/net/eth0 ] || { echo "no eth0"; return 1; }
    echo "eth0 mac=$(cat /sys/class/net/eth0/address)"
    ip link set lo up
    ip addr add @GUEST_IP@/24 dev eth0 || return 1
    ip link set eth0 up || return 1
    ping -c 3 -W 10 @HOST_IP@ || return 1
    echo "eth0 rx_packets=$(cat /sys/class/net/eth0/statistics/rx_packets) tx_packets=$(cat /sys/class/net/eth0/statistics/tx_packets)"
}

# Which virtio devices the guest found, and the driver bound to each (device IDs: 1 net,
# 2 blk, 4 rng, 19 vsock).
bound() {
    for d in /sys/bus/virtio/devices/*; do
        [ -e "$d" ] || continue
        _drv=none
        [ -e "$d/driver" ] && _drv=$(basename "$(readlink "$d/driver")")
        echo "$(basename "$d") id=$(($(cat "$d/device"))) driver=$_drv"
    done
    for d in /sys/bus/virtio/devices/*; do [ -e "$d/driver" ] || return 1; done
}

# The parts to run come from the kernel command line: devtest.parts=a,b,c (read from
# /proc/cmdline; the kernel does not pass dotted parameters to init).
PARTS=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^devtest.parts=//p' | tr ',' ' ')
echo "devtest parts: $PARTS"
SERVE=""
case " $PARTS " in *" vsock "*)
    # The host connects to vsock port 5001 (once) while the other parts run.
    timeout 300 io-bench vsock-echo-serve --port 5001 --count 1 &
    SERVE=$!
esac
part bound bound
for p in $PARTS; do
    case $p in
    rng) part rng rng ;;
    badq) part badq badq ;;
    blk) part blk blk_rw; part blk-ro blk_ro ;;
    vsock) part vsock-to-host vsock_to_host ;;
    net) part net net ;;
    esac
done
if [ -n "$SERVE" ]; then
    wait $SERVE
    echo "devtest vsock-server: rc=$?"
fi
echo "devtest time: done at $(cut -d' ' -f1 /proc/uptime) s"
echo "devtest done"
sync
reboot -f
GUEST
}

devices_setup() {
    rm -rf "$DT"
    mkdir -p "$DT/kit" "$DT/overlay" || return 1
    echo "guest image: $DT_GUEST_CPIO"
    (cd "$DT/kit" && cpio -id usr/local/bin/io-bench usr/share/ember/devtest.ext4.gz <"$DT_GUEST_CPIO") || return 1
    if [ ! -f "$DT/kit/usr/local/bin/io-bench" ] || [ ! -f "$DT/kit/usr/share/ember/devtest.ext4.gz" ]; then
        echo "the guest image lacks the device-test kit (rebuild it: scripts/build-guest-image.sh)"
        return 1
    fi
    cp "$DT/kit/usr/local/bin/io-bench" /usr/local/bin/io-bench && chmod 0755 /usr/local/bin/io-bench
    gunzip -c "$DT/kit/usr/share/ember/devtest.ext4.gz" >"$DT/rw.img" || return 1
    cp "$DT/rw.img" "$DT/ro.img" || return 1
    md5sum "$DT/ro.img" | cut -d' ' -f1 >"$DT/ro.md5"
    ls -l "$DT/rw.img" "$DT/ro.img"
    DT_TOKEN="ember-devtest-written-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "token: $DT_TOKEN"
    if strings "$DT/rw.img" | grep -q "$DT_TOKEN"; then
        echo "token already in the image"
        return 1
    fi
    # TAP for virtio-net, where this host allows it.
    rm -f "$DT/net-skip"
    if [ "$(id -u)" != 0 ]; then
        echo "not root" >"$DT/net-skip"
    elif [ ! -c /dev/net/tun ]; then
        echo "no /dev/net/tun" >"$DT/net-skip"
    elif ! tunctl -t "$DT_TAP" >"$DT/tunctl.log" 2>&1; then
        echo "tunctl -t $DT_TAP failed: $(cat "$DT/tunctl.log")" >"$DT/net-skip"
    else
        ip addr add "$DT_HOST_IP/24" dev "$DT_TAP" && ip link set "$DT_TAP" up && DT_NET=1
        [ "$DT_NET" = 1 ] || echo "cannot configure $DT_TAP" >"$DT/net-skip"
    fi
    if [ "$DT_NET" = 1 ]; then
        echo "tap $DT_TAP up with $DT_HOST_IP/24"
    else
        echo "net will be skipped: $(cat "$DT/net-skip")"
    fi
    devtest_guest_script | sed -e "s/@TOKEN@/$DT_TOKEN/g" -e "s/@NET@/$DT_NET/g" \
        -e "s/@HOST_IP@/$DT_HOST_IP/g" -e "s/@GUEST_IP@/$DT_GUEST_IP/g" \
        -e "s/@BYTES@/$DT_ECHO_BYTES/g" >"$DT/overlay/devtest.sh"
    chmod 0755 "$DT/overlay/devtest.sh"
    (cd "$DT/overlay" && echo devtest.sh | cpio -o -H newc >"$DT/overlay.cpio" 2>/dev/null) || return 1
    # Concatenated archives: the kernel unpacks both into the guest's rootfs.
    cat "$DT_GUEST_CPIO" "$DT/overlay.cpio" >"$DT/guest.cpio" || return 1
    ls -l "$DT/guest.cpio"
}
section devices-setup devices_setup

# guest_start TAG PARTS FLAGS...: starts ember on the device-test guest (/devtest.sh running
# PARTS); the host end of the guest->host echo listens first. Console: $DT/TAG.console.
# rc 2 when the guest printed nothing (the nested first-KVM_RUN stall).
guest_start() {
    _tag=$1
    _parts=$2
    shift 2
    rm -f "$DT/v.sock" "$DT"/v.sock_*
    DT_ECHO_PID=""
    case ",$_parts," in *,vsock,*)
        io-bench unix-echo-serve --path "$DT/v.sock_5002" --count 1 >"$DT/$_tag.unix-echo" 2>&1 &
        DT_ECHO_PID=$!
    esac
    : >"$DT/$_tag.console"
    ember vm run --initrd "$DT/guest.cpio" --append "rdinit=/devtest.sh devtest.parts=$_parts $DT_APPEND" \
        --mem-mib 256 "$@" --timings --timeout-s 600 --console-file "$DT/$_tag.console" \
        >"$DT/$_tag.ember" 2>&1 &
    DT_PID=$!
    # The kernel logs from its first second (loglevel=6): a silent guest is the nested
    # first-KVM_RUN stall, not worth the whole boot limit.
    _rc=2
    if wait_for_line "$DT/$_tag.console" "." "${DEVTEST_FIRST_OUTPUT_LIMIT:-60}" "$DT_PID"; then
        wait_for_line "$DT/$_tag.console" "^devtest begin" "${RIG_BOOT_LIMIT:-180}" "$DT_PID" &&
            return 0
        _rc=1
    elif ! kill -0 "$DT_PID" 2>/dev/null; then
        # ember exited before the guest printed anything: its error is in $DT/$_tag.ember.
        _rc=1
    fi
    # Where the vCPUs are (ember prints each vCPU's RIP on SIGUSR1): look it up in System.map.
    kill -USR1 "$DT_PID" 2>/dev/null
    sleep 1
    kill "$DT_PID" $DT_ECHO_PID 2>/dev/null
    wait "$DT_PID"
    [ -n "$DT_ECHO_PID" ] && wait "$DT_ECHO_PID"
    return "$_rc"
}

# guest_run TAG PARTS FLAGS...: boots the guest (retrying silent boots), runs the host side of
# the vsock echo when PARTS has vsock, waits for the guest to finish and ember to exit 0.
guest_run() {
    _tag=$1
    _parts=$2
    [ -f "$DT/guest.cpio" ] || { echo "setup failed"; return 1; }
    _try=1
    while :; do
        guest_start "$@"
        _r=$?
        echo "boot attempt $_try rc=$_r"
        [ "$_r" = 0 ] && break
        cat "$DT/$_tag.ember" "$DT/$_tag.console"
        [ "$_r" = 2 ] || return 1
        if [ "$_try" -ge "${RIG_BOOT_TRIES:-3}" ]; then
            # Stalls come in streaks per host boot: ask the rig for a fresh host.
            retry_host "devices guest printed nothing in $_try boots"
            return 1
        fi
        echo "guest printed nothing: retrying"
        _try=$((_try + 1))
    done
    echo "guest reached /devtest.sh (parts $_parts)"
    case ",$_parts," in *,vsock,*)
        # Host -> guest echo, while the guest runs its other parts.
        wait_for_line "$DT/$_tag.console" "echo server ready \\(vsock port 5001\\)" 120
        io-bench host-echo --uds "$DT/v.sock" --port 5001 --bytes "$DT_ECHO_BYTES" --wait-s 60 \
            >"$DT/$_tag.host-echo" 2>&1
        echo "host-echo rc=$?" >>"$DT/$_tag.host-echo"
    esac
    wait_for_line "$DT/$_tag.console" "^devtest done" 300 || echo "guest did not finish"
    _n=0
    while kill -0 "$DT_PID" 2>/dev/null && [ "$_n" -lt 300 ]; do sleep 0.2; _n=$((_n + 1)); done
    if kill -0 "$DT_PID" 2>/dev/null; then
        echo "ember still running after the guest finished: stopping it"
        kill "$DT_PID"
    fi
    wait "$DT_PID"
    _status=$?
    if [ -n "$DT_ECHO_PID" ]; then
        kill "$DT_ECHO_PID" 2>/dev/null
        wait "$DT_ECHO_PID"
    fi
    grep -E "^devtest (bound|time): " "$DT/$_tag.console"
    echo "--- ember output"
    cat "$DT/$_tag.ember"
    echo "ember exit=$_status"
    [ "$_status" = 0 ]
}

# Guest A: both disks and vsock. Guest B: rng and net. Guest "all" (last) has all five: it
# caught the fourth virtio-mmio slot getting GSI 8, which the guest's rtc_cmos owns (vsock
# probe -EBUSY; fixed in the vmm by 7a08975, which skips GSIs 8 and 12).
DT_NET_FLAGS=""
[ "$DT_NET" = 1 ] && DT_NET_FLAGS="--net $DT_TAP"
section devices-boot guest_run a blk,vsock --block "$DT/rw.img" --block "$DT/ro.img,ro" --vsock "$DT/v.sock"
# shellcheck disable=SC2086
section devices-boot-rng-net guest_run b rng,badq,net --rng $DT_NET_FLAGS --log "$DT/b.log"

# guest_part TAG NAME: the guest's lines of part NAME; rc 0 when the guest reported rc=0.
guest_part() {
    grep "^devtest $2: " "$DT/$1.console"
    grep -q "^devtest $2: rc=0" "$DT/$1.console"
}

devices_blk() {
    guest_part a blk
    _g=$?
    echo "--- host, after the VM exited: rw.img"
    if strings "$DT/rw.img" | grep -q "^$DT_TOKEN\$"; then
        echo "host found the guest's data in rw.img: $DT_TOKEN"
    else
        echo "host did not find $DT_TOKEN in rw.img"
        return 1
    fi
    return "$_g"
}
section devices-blk devices_blk

devices_blk_ro() {
    guest_part a blk-ro
    _g=$?
    echo "--- host, after the VM exited: ro.img"
    _now=$(md5sum "$DT/ro.img" | cut -d' ' -f1)
    if [ "$_now" = "$(cat "$DT/ro.md5")" ]; then
        echo "ro.img unchanged (md5 $_now)"
    else
        echo "ro.img changed: md5 $(cat "$DT/ro.md5") -> $_now"
        return 1
    fi
    return "$_g"
}
section devices-blk-ro devices_blk_ro

devices_vsock() {
    echo "--- host -> guest (host connects to $DT/v.sock, CONNECT 5001)"
    cat "$DT/a.host-echo" 2>/dev/null
    grep -q "^host-echo rc=0" "$DT/a.host-echo" 2>/dev/null
    _h=$?
    grep "echoed .* (vsock port 5001)" "$DT/a.console"
    grep "^devtest vsock-server: " "$DT/a.console"
    echo "--- guest -> host (guest connects to CID 2 port 5002, host listens at $DT/v.sock_5002)"
    guest_part a vsock-to-host
    _g=$?
    cat "$DT/a.unix-echo" 2>/dev/null
    [ "$_h" = 0 ] && [ "$_g" = 0 ]
}
section devices-vsock devices_vsock

section devices-rng guest_part b rng

# The guest's malformed chains (part badq) against ember's log of guest B: one warning of the
# rng device per bad chain, one for the impossible avail index, and the VM ran on (guest B's
# net part came after, and ember exited 0: devices-boot-rng-net).
devices_bad_descriptor() {
    guest_part b badq
    _g=$?
    echo "--- ember's log of guest B: the device's warnings"
    grep -E "virtio-rng: " "$DT/b.log"
    for w in "Descriptor points outside guest memory" "Descriptor chain loops or is longer than the queue" \
        "device-readable descriptor in request" "unusable avail ring"; do
        echo "warnings \"$w\": $(grep -c "virtio-rng: .*$w" "$DT/b.log")"
    done
    return "$_g"
}
section devices-bad-descriptor devices_bad_descriptor

devices_net() {
    guest_part b net
    _g=$?
    if [ "$DT_NET" = 1 ]; then
        echo "host $DT_TAP rx_packets=$(cat /sys/class/net/$DT_TAP/statistics/rx_packets) tx_packets=$(cat /sys/class/net/$DT_TAP/statistics/tx_packets)"
        ip link set "$DT_TAP" down
        tunctl -d "$DT_TAP" >/dev/null 2>&1
    else
        echo "skipped: $(cat "$DT/net-skip" 2>/dev/null)"
    fi
    return "$_g"
}
section devices-net devices_net

# Guest "all": five virtio devices at once (GSIs 5-9); every one must get its driver.
devices_all_bound() {
    _net=""
    [ "$DT_NET" = 1 ] && tunctl -t "$DT_TAP" >/dev/null 2>&1 && _net="--net $DT_TAP"
    # shellcheck disable=SC2086
    guest_run all bound --block "$DT/rw.img" --block "$DT/ro.img,ro" --rng \
        --vsock "$DT/v.sock" $_net >"$DT/all.run" 2>&1
    _r=$?
    grep "^devtest bound: " "$DT/all.console"
    grep -i -E "virtio|irq" "$DT/all.console" | grep -v "^devtest" | tail -n 8
    [ -n "$_net" ] && tunctl -d "$DT_TAP" >/dev/null 2>&1
    if [ "$_r" != 0 ]; then
        echo "--- guest_run rc=$_r; its output:"
        cat "$DT/all.run"
        return 1
    fi
    guest_part all bound >/dev/null
}
section devices-all-bound devices_all_bound
