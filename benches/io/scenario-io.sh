# io: virtio-blk and vsock benchmarks inside ember's virtual KVM host. Sourced by the host's
# /init after /rig/lib.sh (busybox sh). Needs, in the host image:
#   /usr/local/bin/io-bench      static io-bench (host side of the vsock benchmark)
#   /bench/io-bench.cpio         guest initramfs whose /init is io-bench (guest side)
#   /usr/local/bin/ember, /var/lib/ember/guest/vmlinux (as for every scenario)
#   optional: qemu-system-x86_64 + firmware (rig/reliability/qemu-bundle.sh, added at /): the
#   same guest under QEMU (-M microvm -accel kvm, virtio-blk-device on the same kind of image)
# Sections: io-setup, io-guest-ready, io-vsock, io-exit, io-guest, io-ember, io-fs (the file
# workload over virtio-fs and over ext4 on virtio-blk in one guest; needs
# /bench/fsb.ext4.gz, an empty ext4 image), io-fs-host (the same on the host directory), and
# with QEMU io-qemu-guest (blk table; QEMU has no vsock here: no vhost in the host kernel).
# IO_MIB: transfer size of each test in MiB (run.sh --mib rewrites the line below).

IO_MIB=128

section io-setup sh -c "
    rm -f /tmp/io.img /tmp/io.vsock /tmp/io.vsock_*
    dd if=/dev/zero of=/tmp/io.img bs=1M count=0 seek=$((IO_MIB + 16)) 2>&1 || exit 1
    ls -l /tmp/io.img /bench/io-bench.cpio /usr/local/bin/io-bench"

# io_start: boots the io-bench guest; a guest silent for 60 s (the kernel logs from its first
# second with loglevel=6) hit the nested first-KVM_RUN stall: up to 3 boots, then a new host.
io_start() {
    _try=1
    while :; do
        rm -f /tmp/io.vsock /tmp/io.vsock_*
        : >/tmp/io-guest.log
        ember vm run --initrd /bench/io-bench.cpio --mem-mib 256 \
            --block /tmp/io.img --vsock /tmp/io.vsock \
            --append "io_bench.mib=$IO_MIB loglevel=6" --timings --timeout-s 900 \
            --console-file /tmp/io-guest.log >/tmp/io-ember.log 2>&1 &
        IO_PID=$!
        if wait_for_line /tmp/io-guest.log "." 60; then
            wait_for_line /tmp/io-guest.log "io-bench: ready" 600
            return
        fi
        kill -USR1 "$IO_PID" 2>/dev/null
        sleep 1
        kill "$IO_PID" 2>/dev/null
        wait "$IO_PID"
        cat /tmp/io-ember.log
        echo "boot attempt $_try: guest printed nothing"
        if [ "$_try" -ge 3 ]; then
            retry_host "io-bench guest printed nothing in $_try boots"
            return 1
        fi
        _try=$((_try + 1))
    done
}
section io-guest-ready io_start
section_timeout 600 io-vsock io-bench host-vsock --uds /tmp/io.vsock --mib "$IO_MIB" --quit

# The guest reboots after --quit; ember then exits on its own.
io_wait_exit() {
    _n=0
    while kill -0 "$IO_PID" 2>/dev/null && [ "$_n" -lt 300 ]; do sleep 0.2; _n=$((_n + 1)); done
    if kill -0 "$IO_PID" 2>/dev/null; then
        echo "ember still running: stopping it"
        kill "$IO_PID"
    fi
    wait "$IO_PID"
    echo "ember exit=$?"
}
section io-exit io_wait_exit
section io-guest cat /tmp/io-guest.log
section io-ember cat /tmp/io-ember.log

# The file workload: virtio-fs (share `bench` of /tmp/fs-share) and ext4 on virtio-blk
# (/dev/vda) in one guest, then the same on the host directory itself.
io_fs() {
    [ -f /bench/fsb.ext4.gz ] || { echo "skipped: no /bench/fsb.ext4.gz"; return 1; }
    rm -rf /tmp/fs-share /tmp/fs-host && mkdir -p /tmp/fs-share /tmp/fs-host
    gunzip -c /bench/fsb.ext4.gz >/tmp/fsb.img || return 1
    : >/tmp/io-fs-guest.log
    ember vm run --initrd /bench/io-bench.cpio --mem-mib 256 --block /tmp/fsb.img \
        --share bench=/tmp/fs-share --timeout-s 1500 --console-file /tmp/io-fs-guest.log \
        --append "io_bench.mib=$IO_MIB io_bench.files=10000 io_bench.vsock=0 io_bench.blk=0 io_bench.fs=bench io_bench.ext4=/dev/vda loglevel=6" \
        >/tmp/io-fs-ember.log 2>&1
    echo "ember exit=$?"
    cat /tmp/io-fs-ember.log
    grep -a "^| \|io-bench:" /tmp/io-fs-guest.log
}
section io-fs io_fs
section_timeout 900 io-fs-host io-bench files --dir /tmp/fs-host --mib "$IO_MIB" --files 10000 --label host-dir

# The peer: the same kernel and io-bench guest under QEMU (blk only, io_bench.vsock=0).
io_qemu() {
    command -v qemu-system-x86_64 >/dev/null || { echo "skipped: no qemu-system-x86_64 in this host"; return 0; }
    rm -f /tmp/qio.img
    dd if=/dev/zero of=/tmp/qio.img bs=1M count=0 seek=$((IO_MIB + 16)) 2>/dev/null || return 1
    : >/tmp/io-qemu.log
    _t0=$(cut -d' ' -f1 /proc/uptime)
    qemu-system-x86_64 -L /usr/share/qemu -accel kvm -M microvm,acpi=off -cpu host,-arch-capabilities \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot -m 256 -smp 1 \
        -kernel /var/lib/ember/guest/vmlinux -initrd /bench/io-bench.cpio \
        -drive id=d0,file=/tmp/qio.img,format=raw,if=none -device virtio-blk-device,drive=d0 \
        -append "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 quiet io_bench.mib=$IO_MIB io_bench.vsock=0" \
        >/tmp/io-qemu.log 2>&1 &
    _qpid=$!
    wait_for_line /tmp/io-qemu.log "io-bench: done" 900
    _rc=$?
    _t1=$(cut -d' ' -f1 /proc/uptime)
    kill "$_qpid" 2>/dev/null
    wait "$_qpid" 2>/dev/null
    cat /tmp/io-qemu.log
    echo "qemu run: host uptime $_t0 -> $_t1"
    return "$_rc"
}
section io-qemu-guest io_qemu
