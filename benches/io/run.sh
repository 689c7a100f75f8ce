#!/usr/bin/env bash
# Build io-bench (static), a guest initramfs whose /init is io-bench, and run the I/O
# benchmarks inside ember's virtual KVM host; then print the result tables.
# Usage: benches/io/run.sh [--mib N] [--micro-only] [--qemu] [--log FILE]
# --qemu: also copy QEMU into the virtual host (rig/reliability/qemu-bundle.sh) and run the same
# guest under it (blk only) as the peer to compare with.
# Needs what every rig run needs (scripts/setup.sh: QEMU, host kernel, guest kernel, static
# ember at /usr/local/bin/ember) plus busybox-static.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MIB=128
MICRO_ONLY=0
QEMU=0
LOG=""
while [ $# -gt 0 ]; do
    case "$1" in
    --mib) MIB=$2; shift 2 ;;
    --micro-only) MICRO_ONLY=1; shift ;;
    --qemu) QEMU=1; shift ;;
    --log) LOG=$2; shift 2 ;;
    *) echo "usage: $0 [--mib N] [--micro-only] [--qemu] [--log FILE]" >&2; exit 2 ;;
    esac
done

TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/io-bench
BIN=$TARGET_DIR/$TRIPLE/release/io-bench
WORK=$(mktemp -d /tmp/ember-io-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "== building io-bench (static)" >&2
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --target "$TRIPLE" --manifest-path "$HERE/Cargo.toml"

echo "== micro-benchmark of the device code (this machine, no KVM)" >&2
"$BIN" micro --mib "$MIB"
[ "$MICRO_ONLY" = 1 ] && exit 0

echo "== building ember-rig and the io-bench guest initramfs" >&2
(cd "$ROOT" && cargo build --release -p ember-rig)
RIG=${EMBER_RIG:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ember-rig}
"$RIG" initramfs --agent "$BIN" --busybox /bin/busybox --out "$WORK/io-bench.cpio"
sed "s/^IO_MIB=.*/IO_MIB=$MIB/" "$HERE/scenario-io.sh" >"$WORK/50-io.sh"
# An empty ext4 image for the file workload over virtio-blk (the virtual host has no mkfs).
truncate -s $((MIB + 192))M "$WORK/fsb.ext4"
mkfs.ext4 -F -q "$WORK/fsb.ext4"
gzip -1 "$WORK/fsb.ext4"

echo "== running the virtual KVM host (minutes under TCG)" >&2
args=(run --scenario "$WORK/50-io.sh"
    --add "$BIN:/usr/local/bin/io-bench"
    --add "$WORK/io-bench.cpio:/bench/io-bench.cpio"
    --add "$WORK/fsb.ext4.gz:/bench/fsb.ext4.gz")
[ -n "$LOG" ] && args+=(--log "$LOG")
if [ "$QEMU" = 1 ]; then
    "$ROOT/rig/reliability/qemu-bundle.sh" "$WORK/qemu" >&2
    args+=(--add "$WORK/qemu:/")
fi
"$RIG" "${args[@]}"
