#!/usr/bin/env bash
# Build ember's kernels from Debian's linux-source-6.1:
#   guest: tinyconfig + guest.config              -> vmlinux + bzImage -> $EMBER_GUEST_DIR (/var/lib/ember/guest)
#   host:  tinyconfig + guest.config + host.config -> vmlinux           -> $EMBER_HOST_DIR  (/var/lib/ember/host)
# Usage: build.sh [guest|host|all]   (default: all, guest first)
# Results are cached under $EMBER_KERNEL_CACHE/<name>-<hash>/, the hash covering the fragments, the
# patches, this script and the source package version: a second run only reinstalls (seconds).
# The build tree ($EMBER_KERNEL_CACHE/build-<name>) is kept, so a changed fragment rebuilds incrementally.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../scripts/lib.sh"

SRC_PKG=linux-source-6.1
JOBS=${EMBER_KERNEL_JOBS:-$(nproc)}

ensure_pkgs "$SRC_PKG" build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio

SRC_VER=$(pkg_version "$SRC_PKG")
TARBALL=/usr/src/$SRC_PKG.tar.xz
[ -f "$TARBALL" ] || die "Missing $TARBALL"
mkdir -p "$EMBER_KERNEL_CACHE"

PATCHES=()
if [ -d "$HERE/patches" ]; then
    while IFS= read -r p; do PATCHES+=("$p"); done < <(find "$HERE/patches" -name '*.patch' | sort)
fi
PATCH_HASH=$(hash_of "${PATCHES[@]+"${PATCHES[@]}"}" "patches")

# The source tree: extracted and patched once per (source version, patch set).
prepare_source() {
    local src=$EMBER_KERNEL_CACHE/src-$SRC_VER-p$PATCH_HASH
    if [ ! -f "$src/.ember-ready" ]; then
        log "Extracting $TARBALL (once) into $src"
        rm -rf "$src.tmp" "$src"
        mkdir -p "$src.tmp"
        tar -xJf "$TARBALL" -C "$src.tmp"
        local p
        for p in "${PATCHES[@]+"${PATCHES[@]}"}"; do
            log "  patch $(basename "$p")"
            patch -d "$src.tmp/$SRC_PKG" -p1 --forward --batch < "$p" >&2
        done
        touch "$src.tmp/.ember-ready"
        mv "$src.tmp" "$src"
    fi
    [ -d "$src/$SRC_PKG" ] || die "No $SRC_PKG directory in $src"
    echo "$src/$SRC_PKG"
}

# check_fragments CONFIG FRAGMENT...: report fragment settings that did not survive olddefconfig.
check_fragments() {
    local config=$1; shift
    local bad=0 line sym
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*)
            if ! grep -qxF "$line" "$config"; then
                log "  NOT SET: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo absent))"
                bad=$((bad + 1))
            fi
            ;;
        "# CONFIG_"*" is not set")
            sym=${line#\# }; sym=${sym%% *}
            if grep -qE "^$sym=" "$config"; then
                log "  NOT OFF: $sym ($(grep -E "^$sym=" "$config"))"
                bad=$((bad + 1))
            fi
            ;;
        esac
    done < <(cat "$@")
    if [ "$bad" -eq 0 ]; then
        log "  all fragment settings survived"
    else
        log "  $bad fragment setting(s) did not survive (see above)"
    fi
}

# build NAME TARGETS FRAGMENT...: sets BUILT to the cache directory holding the results.
BUILT=
build() {
    local name=$1 targets=$2; shift 2
    local frags=("$@")
    local hash
    hash=$(hash_of "$name" "$targets" "${frags[@]}" "$HERE/build.sh" "$SRC_VER" "$PATCH_HASH")
    local out=$EMBER_KERNEL_CACHE/$name-$hash
    BUILT=$out
    if [ -f "$out/.ember-done" ]; then
        log "$name kernel: cached in $out"
        return 0
    fi
    local tree
    tree=$(prepare_source)
    local obj=$EMBER_KERNEL_CACHE/build-$name
    # Seed a new build tree from another kernel's (host from guest): kbuild tracks each object's
    # config dependencies, so only what the extra options touch is rebuilt.
    local seed
    for seed in "$EMBER_KERNEL_CACHE"/build-*; do
        if [ ! -d "$obj" ] && [ -f "$seed/vmlinux" ] && [ "$seed" != "$obj" ]; then
            log "$name kernel: seeding $obj from $seed"
            cp -a "$seed" "$obj.tmp"
            mv "$obj.tmp" "$obj"
        fi
    done
    mkdir -p "$obj"
    log "$name kernel: configuring in $obj (tinyconfig + ${frags[*]##*/})"
    make -C "$tree" O="$obj" -s tinyconfig
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${frags[@]}" >/dev/null
    make -C "$tree" O="$obj" -s olddefconfig
    check_fragments "$obj/.config" "${frags[@]}"
    log "$name kernel: make -j$JOBS $targets (several minutes)"
    local start=$SECONDS
    # shellcheck disable=SC2086
    make -C "$tree" O="$obj" -j"$JOBS" $targets 2>&1 | while IFS= read -r l; do printf '  [%s] %s\n' "$name" "$l"; done
    [ "${PIPESTATUS[0]}" -eq 0 ] || die "$name kernel: make failed"
    log "$name kernel: built in $((SECONDS - start)) s"
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    cp "$obj/vmlinux" "$obj/System.map" "$out.tmp/"
    cp "$obj/.config" "$out.tmp/config"
    if [ -f "$obj/arch/x86/boot/bzImage" ] && [[ " $targets " == *" bzImage "* ]]; then
        cp "$obj/arch/x86/boot/bzImage" "$out.tmp/"
    fi
    touch "$out.tmp/.ember-done"
    rm -rf "$out"
    mv "$out.tmp" "$out"
}

build_and_install() {
    local name=$1 dest=$2 targets=$3; shift 3
    build "$name" "$targets" "$@"
    local f
    for f in vmlinux bzImage System.map config; do
        if [ -f "$BUILT/$f" ]; then
            install_file "$BUILT/$f" "$dest/$f"
        fi
    done
    log "$name kernel: installed to $dest ($(du -h "$dest/vmlinux" | cut -f1) vmlinux)"
}

what=${1:-all}
case "$what" in
guest | all) build_and_install guest "$EMBER_GUEST_DIR" "vmlinux bzImage" "$HERE/guest.config" ;;&
host | all) build_and_install host "$EMBER_HOST_DIR" "vmlinux" "$HERE/guest.config" "$HERE/host.config" ;;
guest) ;;
*) die "Usage: $0 [guest|host|all]" ;;
esac
