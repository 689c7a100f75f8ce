# Shared helpers for ember's setup scripts. Source it: `. "$(dirname "$0")/../scripts/lib.sh"`.
# shellcheck shell=bash

EMBER_ROOT=${EMBER_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
EMBER_KERNEL_CACHE=${EMBER_KERNEL_CACHE:-/var/cache/ember/kernels}
EMBER_GUEST_DIR=${EMBER_GUEST_DIR:-/var/lib/ember/guest}
EMBER_HOST_DIR=${EMBER_HOST_DIR:-/var/lib/ember/host}

log() { printf '[ember %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "Run as root (installs packages and writes /var/lib/ember)"
}

# ensure_pkgs PKG...: apt-get install the Debian packages that are not installed yet.
ensure_pkgs() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        return 0
    fi
    need_root
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# pkg_version PKG: the installed version of a Debian package ("none" when missing).
pkg_version() {
    dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none
}

# hash_of ITEM...: short sha256 over files (by content) and literal strings.
hash_of() {
    local item
    for item in "$@"; do
        if [ -f "$item" ]; then
            printf 'file %s\n' "$(basename "$item")"
            cat "$item"
        else
            printf 'str %s\n' "$item"
        fi
    done | sha256sum | cut -c1-16
}

# install_file SRC DST: copy atomically (DST appears complete or not at all).
install_file() {
    local src=$1 dst=$2
    mkdir -p "$(dirname "$dst")"
    cp -f "$src" "$dst.tmp.$$"
    mv -f "$dst.tmp.$$" "$dst"
}
