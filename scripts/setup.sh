#!/usr/bin/env bash
# Full, idempotent setup of a fresh Debian machine (as root) for building and testing ember:
#   1. Debian packages   2. Rust toolchain   3. guest + host kernels (cached by hash)
#   4. static ember + agent and the guest initramfs.
# A second run checks each step and skips what is up to date (kernels: seconds).
# Usage: setup.sh [--packages]   (--packages: step 1 only, what the fast tier needs)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need_root

log "1/5 Debian packages"
ensure_pkgs build-essential ca-certificates curl git pkg-config xz-utils bc bison flex \
    libelf-dev libssl-dev linux-source-6.1 qemu-system-x86 busybox-static e2fsprogs cpio containerd \
    protobuf-compiler
log "    ok"
if [ "${1:-}" = "--packages" ]; then
    exit 0
fi

log "2/5 Rust toolchain"
export PATH=$HOME/.cargo/bin:$PATH
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup, stable, with clippy and rustfmt)"
log "    $(rustc --version)"

log "3/5 Kernels (guest: $EMBER_GUEST_DIR, host: $EMBER_HOST_DIR)"
"$EMBER_ROOT/guest-kernel-config/build.sh" all

log "4/5 Static binaries and guest image"
"$HERE/build-guest-image.sh"

log "5/5 Debian root for the virtual host's podman/containerd tests (cached; EMBER_SKIP_DEBIAN=1 skips)"
if [ "${EMBER_SKIP_DEBIAN:-0}" = 1 ]; then
    log "    skipped"
else
    "$HERE/build-debian-host.sh"
fi

log "Done. Installed:"
for f in "$EMBER_GUEST_DIR"/vmlinux "$EMBER_GUEST_DIR"/bzImage "$EMBER_GUEST_DIR"/initramfs.cpio \
    "$EMBER_HOST_DIR"/vmlinux /usr/local/bin/ember; do
    if [ -f "$f" ]; then
        log "    $(du -h "$f" | cut -f1)	$f"
    else
        log "    MISSING	$f"
    fi
done
