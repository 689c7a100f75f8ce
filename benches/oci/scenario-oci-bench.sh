# oci-bench: `podman run --rm IMAGE true` with runc and with ember in the Debian root of the
# virtual KVM host, for busybox and a 240 MiB image, RUNS times each (sections
# bench-<runtime>-<image>-<i>), then one ember container by
# runc operation: create (with ember's own phases), start-to-exit, rm (section bench-phases);
# a container joining a CRI pod (bench-cri); `ctr run --rm busybox true` through containerd's
# runc shim and ember's shim v2 (bench-ctr-<runtime>-<i>); a podman pod's start and members
# (bench-pod-<runtime>).
# Generated settings come first (RUNS=..., PARTS=...); see benches/oci/run.sh.

# part NAME: whether PARTS (podman phases cri ctr pod) asks for it.
part() {
    case " $PARTS " in *" $1 "*) return 0 ;; esac
    return 1
}

DEB=/debian
mkdir -p "$DEB" && mount -t ext4 /dev/vda "$DEB" || { echo "no Debian disk"; return 0; }
mkdir -p "$DEB/usr/local/bin" "$DEB/var/lib/ember/guest"
cp /usr/local/bin/ember "$DEB/usr/local/bin/ember"
# An earlier ember to compare with (benches/oci/run.sh with EMBER_BASELINE): the same runs.
BASE=
if [ -x /usr/local/bin/ember-base ]; then
    cp /usr/local/bin/ember-base "$DEB/usr/local/bin/ember-base" && BASE=ember-base
fi
cp /var/lib/ember/guest/* "$DEB/var/lib/ember/guest/" 2>/dev/null
for d in proc sys dev; do mount --bind "/$d" "$DEB/$d"; done
mount --bind /dev/pts "$DEB/dev/pts"
cat >/tmp/dch <<DCH
#!/bin/sh
exec chroot $DEB /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "\$@"
DCH
chmod 755 /tmp/dch
/tmp/dch sh -c 'ember-debian-init setup &&
    podman import /var/lib/ember-oci/busybox-rootfs.tar localhost/busybox >/dev/null || exit 1
    # A 240 MiB image: busybox plus incompressible content.
    rm -rf /var/tmp/big && mkdir -p /var/tmp/big &&
        tar -xf /var/lib/ember-oci/busybox-rootfs.tar -C /var/tmp/big &&
        head -c 240M /dev/urandom >/var/tmp/big/blob &&
        tar -C /var/tmp/big -cf /var/tmp/big.tar . &&
        podman import /var/tmp/big.tar localhost/big >/dev/null &&
        rm -rf /var/tmp/big /var/tmp/big.tar'

cat >"$DEB/usr/local/bin/timed" <<'TIMED'
#!/bin/sh
# timed CMD...: run CMD, print "wall_ms=N rc=N" after its output.
t0=$(date +%s%N)
"$@"
rc=$?
t1=$(date +%s%N)
echo "wall_ms=$(( (t1 - t0) / 1000000 )) rc=$rc"
TIMED
chmod 755 "$DEB/usr/local/bin/timed"

# Runs alternate between the runtimes (and images), so a slow stretch of the machine hits each
# alike. Sections bench-<runtime>-<image>-<i>.
i=1
part podman || i=$((RUNS + 1))
while [ "$i" -le "$RUNS" ]; do
    for img in busybox big; do
    for rt in runc $BASE ember; do
        flag=runc
        [ $rt != runc ] && flag=/usr/local/bin/$rt
        section_timeout 900 "bench-$rt-$img-$i" /tmp/dch sh -c "
            /usr/local/bin/timed podman --runtime $flag run --rm localhost/$img true >/var/tmp/bench.out 2>&1
            cat /var/tmp/bench.out"
        # A pod guest that never reached /init: the nested first-KVM_RUN stall of this test
        # machine (it strikes every VM of an unlucky host boot): ask the rig for a new host.
        if grep -q "did not announce itself" "$DEB/var/tmp/bench.out" 2>/dev/null &&
            ! grep -q init_start "$DEB/var/tmp/bench.out"; then
            retry_host "oci-bench: the pod guest never reached /init"
        fi
    done
    done
    i=$((i + 1))
done

# One container of each runtime by runc operation: create (podman init, with ember's phases),
# start to exit, rm.
cat >"$DEB/usr/local/bin/phases-bench" <<'PHASES'
#!/bin/sh
rt=$1
R="--runtime /usr/local/bin/$rt"
[ "$rt" = runc ] && R="--runtime runc"
podman $R create --name ph-$rt localhost/busybox true >/dev/null || exit 1
echo "op=create rt=$rt $(/usr/local/bin/timed podman $R init ph-$rt | tail -1)"
[ "$rt" = runc ] || echo "phases rt=$rt $(cat /run/ember/$(podman inspect -f '{{.ID}}' ph-$rt)/timings.json)"
echo "op=start-to-exit rt=$rt $(/usr/local/bin/timed podman $R start -a ph-$rt | tail -1)"
echo "op=rm rt=$rt $(/usr/local/bin/timed podman $R rm ph-$rt | tail -1)"
PHASES
chmod 755 "$DEB/usr/local/bin/phases-bench"
part phases && for rt in runc $BASE ember; do
    section_timeout 900 "bench-phases-$rt" /tmp/dch /usr/local/bin/phases-bench $rt
done

# bench-cri: a container added to a running CRI pod (its rootfs into a disk slot of the
# sandbox's VM) against the same container in a VM of its own, with ember's runc CLI:
# create + start + run `true` + delete, RUNS times each.
cat >"$DEB/usr/local/bin/cri-bench" <<'CRIBENCH'
#!/bin/sh
B=/var/tmp/cri-bench
rm -rf $B && mkdir -p $B/rootfs && tar -xf /var/lib/ember-oci/busybox-rootfs.tar -C $B/rootfs || exit 1
# bundle NAME TYPE ARGS_JSON: TYPE sandbox, container (of sandbox sb) or single.
bundle() {
    mkdir -p $B/$1
    ann='{}'
    [ "$2" != single ] && ann="{\"io.kubernetes.cri.container-type\": \"$2\", \"io.kubernetes.cri.sandbox-id\": \"sb\"}"
    cat >$B/$1/config.json <<JSON
{"ociVersion": "1.0.2", "root": {"path": "$B/rootfs"}, "annotations": $ann,
 "process": {"args": $3, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]},
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}}
JSON
}
bundle sb sandbox '["sleep", "1000"]'
bundle member container '["true"]'
bundle single single '["true"]'
# once KIND ID: create, start, wait for the exit, delete; prints the wall time.
once() {
    t0=$(date +%s%N)
    ember create --bundle $B/$1 $2 >/dev/null 2>&1 </dev/null || { echo "$1 create failed"; return 1; }
    ember start $2 || return 1
    n=0
    while ! ember state $2 | grep -q '"status": *"stopped"'; do
        n=$((n + 1)); [ $n -gt 600 ] && { echo "$2 did not stop"; return 1; }
        sleep 0.05
    done
    ember delete $2 || return 1
    echo "cri kind=$1 ms=$(( ($(date +%s%N) - t0) / 1000000 ))"
}
ember create --bundle $B/sb sb >/dev/null 2>&1 </dev/null && ember start sb || exit 1
i=1
while [ $i -le $1 ]; do
    once member m$i || exit 1
    once single s$i || exit 1
    i=$((i + 1))
done
ember kill sb KILL; sleep 1; ember delete --force sb
CRIBENCH
chmod 755 "$DEB/usr/local/bin/cri-bench"
part cri && section_timeout 900 bench-cri /tmp/dch /usr/local/bin/cri-bench "$RUNS"

# bench-pod-<runtime>: a podman pod — `pod start` (under ember: the infra container's VM
# boots), then RUNS times `podman run --rm --pod P busybox true` (under ember: a member made
# in the running VM, no boot). --share-parent=false: the cgroupfs pod cgroup of this host
# refuses every device (README, slow tier).
cat >"$DEB/usr/local/bin/pod-bench" <<'PODBENCH'
#!/bin/sh
rt=$1
R="--runtime /usr/local/bin/$rt"
[ "$rt" = runc ] && R="--runtime runc"
podman $R pod create --name pb-$rt --share-parent=false >/dev/null || exit 1
echo "podop=start rt=$rt $(/usr/local/bin/timed podman $R pod start pb-$rt | tail -1)"
i=1
while [ $i -le $2 ]; do
    echo "podop=member rt=$rt $(/usr/local/bin/timed podman $R run --rm --pod pb-$rt localhost/busybox true | tail -1)"
    i=$((i + 1))
done
# One member by runc operation (with ember's create phases).
podman $R create --pod pb-$rt --name pbm-$rt localhost/busybox true >/dev/null || exit 1
echo "podmember op=create rt=$rt $(/usr/local/bin/timed podman $R init pbm-$rt | tail -1)"
[ "$rt" = runc ] || echo "podmember phases rt=$rt $(cat /run/ember/$(podman inspect -f '{{.ID}}' pbm-$rt)/timings.json)"
echo "podmember op=start-to-exit rt=$rt $(/usr/local/bin/timed podman $R start -a pbm-$rt | tail -1)"
echo "podmember op=rm rt=$rt $(/usr/local/bin/timed podman $R rm pbm-$rt | tail -1)"
podman $R pod rm -f -t 0 pb-$rt >/dev/null
PODBENCH
chmod 755 "$DEB/usr/local/bin/pod-bench"
part pod && for rt in runc $BASE ember; do
    section_timeout 900 "bench-pod-$rt" /tmp/dch /usr/local/bin/pod-bench $rt "$RUNS"
done

# bench-ctr-<runtime>-<i>: `ctr run --rm busybox true` with containerd's runc shim
# (io.containerd.runc.v2) and ember's shim v2 (io.containerd.ember.v2, whose VM runs in the
# shim; the baseline's through the same link pointed at it for its runs), alternating.
cat >"$DEB/usr/local/bin/ctr-bench" <<'CTRBENCH'
#!/bin/sh
rt=$1
R="--runtime io.containerd.runc.v2"
if [ "$rt" != runc ]; then
    ln -sf "/usr/local/bin/$rt" /usr/local/bin/containerd-shim-ember-v2
    R="--runtime io.containerd.ember.v2"
fi
/usr/local/bin/timed ctr run --rm --snapshotter native $R docker.io/library/busybox:latest "cb-$rt-$2" true
CTRBENCH
chmod 755 "$DEB/usr/local/bin/ctr-bench"
if part ctr; then
    section_timeout 300 bench-ctr-setup /tmp/dch sh -c 'ember-debian-init containerd &&
        ctr image import --snapshotter native /var/lib/ember-oci/busybox-oci.tar >/dev/null'
    i=1
    while [ "$i" -le "$RUNS" ]; do
        for rt in runc $BASE ember; do
            section_timeout 600 "bench-ctr-$rt-$i" /tmp/dch /usr/local/bin/ctr-bench $rt $i
        done
        i=$((i + 1))
    done
fi
