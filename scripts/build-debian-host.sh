#!/bin/bash
# Builds the Debian root filesystem that ember's virtual KVM host mounts for the OCI end-to-end
# scenarios (rig/scenarios/50-oci*.sh): podman, containerd, runc, crun, conmon, configured for
# ember, plus a busybox image as a plain rootfs tarball (for `podman import`) and as an OCI
# archive (for `ctr image import`). No registry is needed at run time.
#
# Output (cached; --force rebuilds):  ${EMBER_CACHE:-/var/cache/ember}/debian-host.ext4
# The rig attaches it read-write with QEMU's snapshot=on, so runs never change it.
#
# Inside the image, /usr/local/sbin/ember-debian-init (run in a chroot by the scenario, not as
# PID 1: systemd is far too slow under TCG) mounts what podman and containerd need and starts
# containerd on request.
set -euo pipefail

CACHE=${EMBER_CACHE:-/var/cache/ember}
IMG=$CACHE/debian-host.ext4
WORK=$CACHE/debian-host.build
SUITE=${EMBER_DEBIAN_SUITE:-bookworm}
# The Debian archive this machine's apt already uses (first URIs/deb line of its sources).
apt_mirror() {
    local m
    m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
    [ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1)
    echo "$m"
}
MIRROR=${EMBER_DEBIAN_MIRROR:-$(apt_mirror)}
[ -n "$MIRROR" ] || { echo "No Debian mirror in /etc/apt sources; set EMBER_DEBIAN_MIRROR" >&2; exit 1; }
SIZE_MIB=${EMBER_DEBIAN_SIZE_MIB:-3072}
# containernetworking-plugins: podman's CNI backend (bridge, portmap, firewall), which run
# iptables (its nft backend); nftables only for `nft list ruleset` when debugging.
PKGS=podman,conmon,containerd,runc,crun,busybox-static,iproute2,procps,ca-certificates,uidmap,catatonit,containernetworking-plugins,golang-github-containers-common,iptables,nftables

# The image is rebuilt when this script changes (its hash is kept beside the image).
STAMP=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$IMG" ] && [ "$(cat "$IMG.stamp" 2>/dev/null)" = "$STAMP" ] && [ "${1:-}" != "--force" ]; then
    echo "$IMG (cached)"
    exit 0
fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
command -v mkfs.ext4 >/dev/null || apt-get install -y -qq e2fsprogs
[ -x /bin/busybox ] || apt-get install -y -qq busybox-static
mkdir -p "$CACHE"

ROOT=$WORK/root
t0=$(date +%s)
# The debootstrap is kept between --force rebuilds while its suite and package list stay the same.
if [ "$(cat "$WORK/debootstrap.done" 2>/dev/null)" != "$SUITE $PKGS" ]; then
    rm -rf "$WORK"
    mkdir -p "$ROOT"
    echo "debootstrap $SUITE ($PKGS) ..."
    debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
        tail -30 "$WORK/debootstrap.log"
        exit 1
    }
    echo "$SUITE $PKGS" >"$WORK/debootstrap.done"
fi
echo "debootstrap: $(($(date +%s) - t0)) s"

# --- podman: cgroupfs, file events, vfs storage, podman's default bridge network (CNI's
# "podman" network, 10.88.0.0/16 on cni-podman0), as users run it; ember as a runtime.
# (With netns = "none" podman 4.3 silently drops -p/--publish: no error, no NAT rules,
# "connection refused".)
mkdir -p "$ROOT/etc/containers"
cat >"$ROOT/etc/containers/containers.conf" <<'CONF'
[containers]
log_driver = "k8s-file"

[network]
network_backend = "cni"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"

[engine.runtimes]
ember = ["/usr/local/bin/ember"]
CONF
cat >"$ROOT/etc/containers/storage.conf" <<'CONF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
CONF
[ -f "$ROOT/etc/containers/policy.json" ] || cat >"$ROOT/etc/containers/policy.json" <<'CONF'
{"default": [{"type": "insecureAcceptAnything"}]}
CONF

# --- containerd: native snapshotter. The CRI plugin (driven by rig/cri-test as the kubelet
# would) has three RuntimeClass handlers: runc (the default), ember (ember's shim v2, one VM
# per pod sandbox) and ember-runc (the runc shim running ember as its runc). Its sandbox
# ("pause") image is built below: there is no registry to pull from. Pods get their network
# from the CNI config podman uses (the "podman" bridge, 10.88.0.0/16) and Debian's plugins.
mkdir -p "$ROOT/etc/containerd"
cat >"$ROOT/etc/containerd/config.toml" <<'CONF'
version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/ember-pause:1"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ember]
  runtime_type = "io.containerd.ember.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ember-runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ember-runc.options]
  BinaryName = "/usr/local/bin/ember"
CONF

# --- the init helper.
mkdir -p "$ROOT/usr/local/sbin" "$ROOT/usr/local/bin" "$ROOT/var/lib/ember/guest" "$ROOT/var/lib/ember-oci"
cat >"$ROOT/usr/local/sbin/ember-debian-init" <<'INIT'
#!/bin/sh
# ember-debian-init setup|containerd|stop: the init duties for the OCI scenarios, run inside
# the Debian root (chroot) of ember's virtual KVM host.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
case "${1:-setup}" in
setup)
    mountpoint -q /proc || mount -t proc proc /proc
    mountpoint -q /sys || mount -t sysfs sysfs /sys
    mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
    mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mountpoint -q /dev/pts || mount -t devpts devpts /dev/pts
    mountpoint -q /run || mount -t tmpfs tmpfs /run
    mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
    mkdir -p /run/containers /run/ember /var/lib/containers
    ;;
containerd)
    if [ ! -S /run/containerd/containerd.sock ]; then
        containerd >/run/containerd.log 2>&1 &
        n=0
        while [ ! -S /run/containerd/containerd.sock ] && [ $n -lt 300 ]; do sleep 0.2; n=$((n + 1)); done
    fi
    [ -S /run/containerd/containerd.sock ] || { tail -20 /run/containerd.log; exit 1; }
    ;;
stop)
    pkill containerd 2>/dev/null
    ;;
esac
exit 0
INIT
chmod 755 "$ROOT/usr/local/sbin/ember-debian-init"
echo ember-debian >"$ROOT/etc/hostname"

# --- images: the busybox rootfs tarball, and OCI image archives of busybox and of the CRI
# sandbox ("pause"), built by hand (no registry).
BB=$WORK/busybox
rm -rf "$BB"
mkdir -p "$BB/rootfs/bin" "$BB/rootfs/etc" "$BB/rootfs/tmp" "$BB/rootfs/proc" "$BB/rootfs/sys" "$BB/rootfs/dev" "$BB/rootfs/root"
cp /bin/busybox "$BB/rootfs/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$BB/rootfs/bin/$a"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$BB/rootfs/etc/passwd"
echo "root:x:0:" >"$BB/rootfs/etc/group"
tar --numeric-owner --owner=0 --group=0 -C "$BB/rootfs" -cf "$ROOT/var/lib/ember-oci/busybox-rootfs.tar" .

# oci_archive REF CONFIG_JSON OUT: an OCI image archive (for `ctr image import`) of the
# busybox layer with the image config CONFIG_JSON (its rootfs.diff_ids are filled in).
layer=$ROOT/var/lib/ember-oci/busybox-rootfs.tar
lsha=$(sha256sum "$layer" | cut -d' ' -f1)
lsize=$(stat -c %s "$layer")
oci_archive() {
    local ref=$1 config=$2 out=$3 oci cfg csha man msha
    oci=$(mktemp -d "$BB/oci.XXXXXX")
    mkdir -p "$oci/blobs/sha256"
    cp "$layer" "$oci/blobs/sha256/$lsha"
    cfg=$(printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$config" "$lsha")
    csha=$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)
    printf '%s' "$cfg" >"$oci/blobs/sha256/$csha"
    man=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
        "$csha" "${#cfg}" "$lsha" "$lsize")
    msha=$(printf '%s' "$man" | sha256sum | cut -d' ' -f1)
    printf '%s' "$man" >"$oci/blobs/sha256/$msha"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s","io.containerd.image.name":"%s"}}]}' \
        "$msha" "${#man}" "$ref" "$ref" >"$oci/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
    tar --numeric-owner --owner=0 --group=0 -C "$oci" -cf "$out" oci-layout index.json blobs
}
oci_archive docker.io/library/busybox:latest '{"Env":["PATH=/bin"],"Cmd":["sh"]}' \
    "$ROOT/var/lib/ember-oci/busybox-oci.tar"
# The CRI sandbox's process: it only has to stay (a pause container's one duty).
oci_archive localhost/ember-pause:1 '{"Env":["PATH=/bin"],"Entrypoint":["/bin/sleep","2147483647"]}' \
    "$ROOT/var/lib/ember-oci/pause-oci.tar"

# --- trim what a test host never needs.
rm -rf "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/locale" "$ROOT/var/cache/apt/archives"/*.deb

echo "mkfs.ext4 ${SIZE_MIB} MiB ..."
rm -f "$IMG.tmp"
truncate -s "${SIZE_MIB}M" "$IMG.tmp"
mkfs.ext4 -q -F -L ember-debian -E root_owner=0:0 -d "$ROOT" "$IMG.tmp"
mv "$IMG.tmp" "$IMG"
echo "$STAMP" >"$IMG.stamp"
echo "$IMG built in $(($(date +%s) - t0)) s ($(du -sh "$ROOT" | cut -f1) of files)"
