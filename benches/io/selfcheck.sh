#!/usr/bin/env bash
# Check io-bench's guest and host sides against each other on this machine, without a VM:
# the guest side serves on a Unix socket and hybrid-proxy.py plays ember's CONNECT handshake.
# Also runs the guest block test on a scratch file. Usage: benches/io/selfcheck.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/../../target}/io-bench
cargo build --release --manifest-path "$HERE/Cargo.toml" --target-dir "$TARGET_DIR"
BIN=$TARGET_DIR/release/io-bench
W=$(mktemp -d /tmp/io-selfcheck.XXXXXX)
trap 'kill $PX $GS 2>/dev/null || true; rm -rf "$W"' EXIT
dd if=/dev/zero of="$W/disk.img" bs=1M count=0 seek=80 2>/dev/null
python3 "$HERE/hybrid-proxy.py" "$W/v.sock" "$W/guest.sock" &
PX=$!
"$BIN" guest --dev "$W/disk.img" --mib 64 --unix "$W/guest.sock" &
GS=$!
"$BIN" host-vsock --uds "$W/v.sock" --mib 64 --pings 500 --connects 20 --wait-s 60 --quit
wait $GS
