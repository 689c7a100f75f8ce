#!/bin/sh
# Runs the agent inside a real guest kernel booted by QEMU TCG (test equipment, no KVM needed):
#  1. PID 1 mode: the static agent as /init must print "ember-agent: ready" (no vsock device
#     here, so it reports that and keeps running; QEMU is stopped after the line).
#  2. Containers: /init is a busybox script that runs the static `agent_latency` example,
#     which starts the agent (host mode) and creates/starts/execs/kills/destroys containers
#     with cgroup v2, on the initramfs root (pivot_root falls back to move-mount there).
# Needs: qemu-system-x86_64, cpio, /bin/busybox (static), root (mknod), the guest kernel.
# Usage: agent/scripts/guest-smoke.sh [KERNEL]   (default $EMBER_GUEST_DIR/vmlinux)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KERNEL=${1:-${EMBER_GUEST_DIR:-/var/lib/ember/guest}/vmlinux}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
REL=$TARGET/x86_64-unknown-linux-gnu/release
WORK=$(mktemp -d /tmp/ember-agent-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
    --target x86_64-unknown-linux-gnu -p ember-agent --bin ember-agent --example agent_latency

mkimage() { # DIR OUT
    (cd "$1" && find . | cpio -o -H newc >"$2" 2>/dev/null)
}
skeleton() { # DIR
    mkdir -p "$1/dev" "$1/proc" "$1/sys" "$1/tmp" "$1/run" "$1/bin" "$1/etc"
    cp /bin/busybox "$1/bin/busybox"
    ln -s busybox "$1/bin/sh"
    mknod "$1/dev/console" c 5 1
}
boot() { # INITRD LOG LIMIT_S
    timeout "$3" qemu-system-x86_64 -M microvm -accel tcg -cpu max -m 256 -nodefaults \
        -no-user-config -serial stdio -display none -no-reboot -kernel "$KERNEL" -initrd "$1" \
        -append "console=ttyS0 reboot=k panic=1 8250.nr_uarts=1 random.trust_cpu=on quiet" \
        >"$2" 2>&1 &
}

fail=0
# 1. PID 1
skeleton "$WORK/pid1"
cp "$REL/ember-agent" "$WORK/pid1/init"
mkimage "$WORK/pid1" "$WORK/pid1.cpio"
boot "$WORK/pid1.cpio" "$WORK/pid1.log" 300
qpid=$!
n=0
until grep -q "^ember-agent: ready" "$WORK/pid1.log" || [ $n -ge 600 ] || ! kill -0 $qpid 2>/dev/null; do
    sleep 0.5; n=$((n + 1))
done
kill $qpid 2>/dev/null || true
wait $qpid 2>/dev/null || true
if grep -q "^ember-agent: ready" "$WORK/pid1.log"; then
    echo "pid1: ready"
else
    echo "pid1: FAILED"; cat "$WORK/pid1.log"; fail=1
fi
tr -d "\r" <"$WORK/pid1.log" | grep "^ember-agent:" | grep -v "ready$" || true

# 2. Containers
skeleton "$WORK/ctr"
cp "$REL/ember-agent" "$WORK/ctr/ember-agent"
cp "$REL/examples/agent_latency" "$WORK/ctr/agent_latency"
cat >"$WORK/ctr/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mount -t tmpfs tmpfs /run
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup
$B mkdir -p /dev/pts && $B mount -t devpts devpts /dev/pts
echo "=== BEGIN agent-latency"
EMBER_AGENT_BIN=/ember-agent EMBER_AGENT_EXTRA_ARGS="--cgroup-root /sys/fs/cgroup" /agent_latency 5
echo "=== END agent-latency rc=$?"
$B reboot -f
INIT
chmod +x "$WORK/ctr/init"
mkimage "$WORK/ctr" "$WORK/ctr.cpio"
boot "$WORK/ctr.cpio" "$WORK/ctr.log" 300
wait $! || true
sed -n '/=== BEGIN agent-latency/,/=== END agent-latency/p' "$WORK/ctr.log"
if grep -q "=== END agent-latency rc=0" "$WORK/ctr.log"; then
    echo "containers: ok"
else
    echo "containers: FAILED"; tail -40 "$WORK/ctr.log"; fail=1
fi
exit $fail
