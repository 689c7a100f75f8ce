# io: virtio-blk and vsock benchmarks inside ember's virtual KVM host. Sourced by the host's
# /init after /rig/lib.sh (busybox sh). Needs, in the host image:
#   /usr/local/bin/io-bench      static io-bench (host side of the vsock benchmark)
#   /bench/io-bench.cpio         guest initramfs whose /init is io-bench (guest side)
#   /usr/local/bin/ember, /var/lib/ember/guest/vmlinux (as for every scenario)
# Sections: io-setup, io-guest-ready, io-vsock, io-exit, io-guest, io-ember.
# IO_MIB: transfer size of each test in MiB (run.sh --mib rewrites the line below).

IO_MIB=128

section io-setup sh -c "
    rm -f /tmp/io.img /tmp/io.vsock /tmp/io.vsock_*
    dd if=/dev/zero of=/tmp/io.img bs=1M count=0 seek=$((IO_MIB + 16)) 2>&1 || exit 1
    ls -l /tmp/io.img /bench/io-bench.cpio /usr/local/bin/io-bench"

: >/tmp/io-guest.log
ember vm run --initrd /bench/io-bench.cpio --mem-mib 256 \
    --block /tmp/io.img --vsock /tmp/io.vsock \
    --append "io_bench.mib=$IO_MIB" --timings --timeout-s 900 \
    --console-file /tmp/io-guest.log >/tmp/io-ember.log 2>&1 &
IO_PID=$!

section io-guest-ready wait_for_line /tmp/io-guest.log "io-bench: ready" 600
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
