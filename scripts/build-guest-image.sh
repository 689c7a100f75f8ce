#!/usr/bin/env bash
# Build the static ember + ember-agent binaries and the guest initramfs, then install:
#   $EMBER_GUEST_DIR/initramfs.cpio   (default /var/lib/ember/guest)  /init = ember-agent
#   /usr/local/bin/ember              (static; also what the virtual KVM host carries)
#   /usr/local/bin/containerd-shim-ember-v2 -> ember (containerd's shim v2)
#   $EMBER_HOST_DIR/ember-cri-test    (static CRI client the virtual KVM host carries for the
#                                      OCI scenarios; rig/cri-test)
# Usage: build-guest-image.sh [--no-install-ember]
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"

install_ember=1
[ "${1:-}" = "--no-install-ember" ] && install_ember=0

ensure_pkgs busybox-static cpio e2fsprogs protobuf-compiler
command -v cargo >/dev/null || die "cargo not found (run scripts/setup.sh)"

TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$EMBER_ROOT/target}
REL=$TARGET_DIR/$TRIPLE/release

log "Building static ember + ember-agent (--target $TRIPLE, crt-static)"
(cd "$EMBER_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR" \
    cargo build --release --target "$TRIPLE" -p ember-runtime -p ember-agent)

for bin in ember ember-agent; do
    [ -x "$REL/$bin" ] || die "Missing $REL/$bin after the build"
    if ldd "$REL/$bin" >/dev/null 2>&1 && ! ldd "$REL/$bin" 2>&1 | grep -q 'statically linked'; then
        die "$REL/$bin is not static"
    fi
done

log "Building ember-rig"
(cd "$EMBER_ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p ember-rig)
RIG=$TARGET_DIR/release/ember-rig

# Device-test kit for rig/scenarios/20-devices.sh: a static io-bench (vsock echo in the guest
# and in the virtual host, which extracts it from this image) and a small ext4 disk made with
# mkfs.ext4 -d (gzipped: busybox in the virtual host has no mkfs.ext4).
log "Building static io-bench and the device-test disk"
(cd "$EMBER_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR/io-bench" \
    cargo build --release --target "$TRIPLE" --manifest-path benches/io/Cargo.toml)
IO_BENCH=$TARGET_DIR/io-bench/$TRIPLE/release/io-bench
KIT=$(mktemp -d)
trap 'rm -rf "$KIT"' EXIT
mkdir -p "$KIT/disk/data"
echo "ember-devtest: prepared on the build machine" >"$KIT/disk/data/hello.txt"
mkfs.ext4 -q -F -L devtest -E root_owner=0:0 -d "$KIT/disk" "$KIT/devtest.ext4" 8M
gzip -9n "$KIT/devtest.ext4"

# The CRI client of rig/scenarios/50-oci.sh (containerd's CRI plugin driven as the kubelet
# does); rig::debian puts it into the virtual host beside ember.
log "Building static ember-cri-test"
(cd "$EMBER_ROOT" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$TARGET_DIR/cri-test" \
    cargo build --release --target "$TRIPLE" --manifest-path rig/cri-test/Cargo.toml)
install_file "$TARGET_DIR/cri-test/$TRIPLE/release/ember-cri-test" "$EMBER_HOST_DIR/ember-cri-test"

mkdir -p "$EMBER_GUEST_DIR"
log "Writing $EMBER_GUEST_DIR/initramfs.cpio"
"$RIG" initramfs --agent "$REL/ember-agent" --busybox /bin/busybox --out "$EMBER_GUEST_DIR/initramfs.cpio" \
    --add "$IO_BENCH:/usr/local/bin/io-bench" --add "$KIT/devtest.ext4.gz:/usr/share/ember/devtest.ext4.gz"

if [ "$install_ember" = 1 ]; then
    install_file "$REL/ember" /usr/local/bin/ember
    chmod 0755 /usr/local/bin/ember
    # containerd finds its shim v2 for runtime io.containerd.ember.v2 by this name.
    ln -sf ember /usr/local/bin/containerd-shim-ember-v2
    log "Installed /usr/local/bin/ember (and containerd-shim-ember-v2)"
fi
log "Guest image: $(du -h "$EMBER_GUEST_DIR/initramfs.cpio" | cut -f1) initramfs"
