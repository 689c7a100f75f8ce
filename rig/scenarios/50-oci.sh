# 50-oci: ember as the OCI runtime of real podman and containerd, inside the Debian root
# (scripts/build-debian-host.sh) that rig::debian attaches to the virtual KVM host as /dev/vda.
# Sourced by the host's /init after /rig/lib.sh. Without that disk it prints one line and
# returns (the shared initramfs-only host run).
# Sections: oci-debian, podman-hello, podman-exit-code, podman-volumes, podman-network, podman-net-limit,
# podman-net-flood, podman-resources, podman-fidelity,
# cri-pod, podman-tty,
# podman-exec, podman-stop-rm, ctr-hello, ctr-shim-v2, ctr-cni, ctr-volumes, ctr-resources,
# cri-handlers, podman-template,
# oci-bench.

DEB=/debian
if ! [ -b /dev/vda ] || ! mkdir -p "$DEB" || ! mount -t ext4 /dev/vda "$DEB" 2>/dev/null; then
    echo "50-oci: no Debian disk on /dev/vda: skipped"
    return 0
fi
if ! [ -x "$DEB/usr/local/sbin/ember-debian-init" ]; then
    echo "50-oci: /dev/vda is not the ember Debian host image: skipped"
    umount "$DEB"
    return 0
fi

# The current ember and guest artifacts go into the Debian root (the disk is a QEMU snapshot:
# nothing is kept).
mkdir -p "$DEB/usr/local/bin" "$DEB/var/lib/ember/guest"
cp /usr/local/bin/ember "$DEB/usr/local/bin/ember"
# The CRI client (rig/cri-test), when the virtual host carries it (rig::debian adds it).
[ -x /usr/local/bin/ember-cri-test ] && cp /usr/local/bin/ember-cri-test "$DEB/usr/local/bin/"
cp /var/lib/ember/guest/* "$DEB/var/lib/ember/guest/" 2>/dev/null
# The guest image's static io-bench, for containers that misbehave (podman-net-flood).
(cd /tmp && cpio -id usr/local/bin/io-bench </var/lib/ember/guest/initramfs.cpio 2>/dev/null) &&
    cp /tmp/usr/local/bin/io-bench "$DEB/usr/local/bin/io-bench"
for d in proc sys dev; do mount --bind "/$d" "$DEB/$d"; done
mount --bind /dev/pts "$DEB/dev/pts"
mount -t cgroup2 cgroup2 "$DEB/sys/fs/cgroup" 2>/dev/null
# The Debian root becomes the mount stacked on the virtual host's "/" (as a real root is on
# rootfs), entered through a process chrooted into it. Under a plain chroot, runc's container
# roots would not be stacked on "/" either, and setns(2) into a container's mount namespace
# (runc exec, podman/ctr/CRI exec) would land in the virtual host's initramfs instead of the
# container's rootfs. From here $DEB is that process's root.
cd "$DEB" && mount --move . / || echo "50-oci: cannot move the Debian root onto /"
chroot . /bin/sleep 2147483647 &
DEB_ANCHOR=$!
cd /
n=0
while ! [ -x /proc/$DEB_ANCHOR/root/usr/local/sbin/ember-debian-init ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
DEB=/proc/$DEB_ANCHOR/root

# /tmp/dch CMD...: run CMD in the Debian root with a clean environment (a script, so that
# `timeout` can run it).
cat >/tmp/dch <<DCH
#!/bin/sh
exec chroot $DEB /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "\$@"
DCH
chmod 755 /tmp/dch

# /usr/local/bin/watched SECS CMD... (inside the Debian root): runs CMD, printing the pod VMs'
# console size every 30 s; after SECS it dumps ember's processes, state and the pod VMs'
# console and VMM logs, kills CMD and exits 124. CMD's own output follows, once it ended.
cat >"$DEB/usr/local/bin/watched" <<'WATCHED'
#!/bin/sh
secs=$1
shift
out=/tmp/watched.$$
"$@" >"$out" 2>&1 &
pid=$!
diag() {
    echo "--- ember processes"
    ps -eo pid,etime,args | grep "[/]usr/local/bin/ember"
    echo "--- /run/ember"
    ls /run/ember /run/ember/@pods 2>&1
    for p in /run/ember/@pods/*/; do
        [ -d "$p" ] || continue
        echo "--- $p console.log (tail)"
        tail -c 2000 "$p/console.log" 2>&1
        echo "--- $p vmm.log (tail)"
        tail -c 2000 "$p/vmm.log" 2>&1
    done
}
n=0
rc=
while kill -0 $pid 2>/dev/null; do
    sleep 1
    n=$((n + 1))
    if [ $((n % 30)) -eq 0 ]; then
        for p in /run/ember/@pods/*/; do
            [ -d "$p" ] || continue
            echo "[watched ${n}s] pod $(basename "$p"): console $(wc -c <"$p/console.log" 2>/dev/null || echo -) bytes"
        done
    fi
    [ $n -ge "$secs" ] && rc=124
    if [ -n "$rc" ]; then
        echo "[watched ${n}s] giving up (rc $rc)"
        diag
        kill -9 $pid
        cat "$out"
        exit $rc
    fi
done
wait $pid
rc=$?
cat "$out"
rm -f "$out"
exit $rc
WATCHED
chmod 755 "$DEB/usr/local/bin/watched"

# /usr/local/bin/cri-pod-test (inside the Debian root): containerd's CRI grouping, done by
# hand with ember's runc CLI: a sandbox container (Kata's annotations) and members that join
# its VM, their rootfs shared by virtio-fs. Prints what the e2e test checks.
cat >"$DEB/usr/local/bin/cri-pod-test" <<'CRITEST'
#!/bin/sh
B=/var/tmp/cri
rm -rf $B && mkdir -p $B/rootfs && tar -xf /var/lib/ember-oci/busybox-rootfs.tar -C $B/rootfs || exit 1
# bundle NAME TYPE ARGS_JSON
bundle() {
    mkdir -p $B/$1
    cat >$B/$1/config.json <<JSON
{"ociVersion": "1.0.2", "root": {"path": "$B/rootfs"},
 "process": {"args": $3, "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin:/usr/bin"]},
 "annotations": {"io.kubernetes.cri.container-type": "$2", "io.kubernetes.cri.sandbox-id": "sb1"},
 "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}}
JSON
}
bundle sb sandbox '["sh", "-c", "cat /proc/sys/kernel/random/boot_id; exec sleep 1000"]'
bundle m1 container '["sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo blocks: $(ls /sys/block)"]'
bundle m2 container '["sh", "-c", "cat /proc/sys/kernel/random/boot_id"]'
# wait_stopped ID: until `ember state` says stopped (60 s).
wait_stopped() {
    n=0
    while ! ember state $1 | grep -q '"status": *"stopped"'; do
        n=$((n + 1)); [ $n -gt 300 ] && { echo "$1 did not stop"; return 1; }
        sleep 0.2
    done
}
shares() { ember pod status --json sb1 | grep -oE '"[a-z0-9]+\.rootfs"' | tr -d '"' | sort | tr '\n' ' '; }
ember create --bundle $B/sb sb1 >$B/sb1.out 2>&1 </dev/null || { cat $B/sb1.out; exit 1; }
ember start sb1 || exit 1
for m in m1 m2; do
    ember create --bundle $B/$m $m >$B/$m.out 2>&1 </dev/null || { cat $B/$m.out; exit 1; }
    echo "pods while $m exists: $(ls /run/ember/@pods | tr '\n' ' ')"
    echo "shares while $m exists: $(shares)"
    ember start $m || exit 1
    wait_stopped $m || exit 1
    cat $B/$m.out
    [ "$(head -n1 $B/$m.out)" = "$(head -n1 $B/sb1.out)" ] && echo "$m: same VM as sb1"
    ember delete $m || exit 1
    echo "shares after deleting $m: $(shares)"
done
ember kill sb1 KILL
wait_stopped sb1
ember delete sb1 || exit 1
echo "pods at the end: $(ls /run/ember/@pods 2>/dev/null | wc -l)"

# The pod API does the same for a container created in a running pod.
export EMBER_ROOT=/run/ember-live
echo '{"disk_slots": 1}' >$B/pod.json
ember pod create --config $B/pod.json live >/dev/null || exit 1
ember pod start live >/dev/null || exit 1
for c in c1 c2; do
    ember container create live $c --rootfs $B/rootfs -- sleep 1000 >/dev/null || exit 1
    ember container start live $c >/dev/null || exit 1
    echo "live $c: $(ember container exec live $c -- sh -c 'echo exec-ok; ls /bin/busybox' | tr '\n' ' ')"
    echo "live slot disks with $c: $(ember pod status --json live | grep -cE '"kind": *"container"')"
    ember container stop live $c >/dev/null || exit 1
    ember container delete live $c || exit 1
    echo "live slot disks after $c: $(ember pod status --json live | grep -cE '"kind": *"container"')"
done
ember pod stop live >/dev/null && ember pod delete live >/dev/null || exit 1
echo "live pod deleted"
CRITEST
chmod 755 "$DEB/usr/local/bin/cri-pod-test"

section oci-debian /tmp/dch sh -c '
    ember-debian-init setup || exit 1
    podman --version && ctr --version && runc --version | head -1 && ember --version || exit 1
    podman import /var/lib/ember-oci/busybox-rootfs.tar localhost/busybox >/dev/null || exit 1
    podman images --format "{{.Repository}}:{{.Tag}}"'

section podman-hello /tmp/dch /usr/local/bin/watched 600 sh -c '
    podman --runtime /usr/local/bin/ember run --rm localhost/busybox echo hello >/var/tmp/hello.out 2>&1
    rc=$?
    cat /var/tmp/hello.out
    exit $rc'
# A pod VM that never reached /init (ember's error lists the VMM phases, without init_start)
# hit the nested first-KVM_RUN stall of this test machine: ask the rig for a new host.
if grep -q "did not announce itself" "$DEB/var/tmp/hello.out" 2>/dev/null &&
    ! grep -q init_start "$DEB/var/tmp/hello.out"; then
    retry_host "50-oci: the pod guest never reached /init"
fi

section podman-exit-code /tmp/dch /usr/local/bin/watched 600 sh -c '
    podman --runtime /usr/local/bin/ember run --rm localhost/busybox sh -c "exit 3"
    echo "exit=$?"'

# Host binds and the rootfs are shared live (virtio-fs), as under runc; each runtime in turn:
# podman's /etc/hosts (with an --add-host entry), a -v volume written by the container and by
# the host while it runs, a :ro volume that refuses writes, and `podman diff` of a file the
# container made in its rootfs.
cat >"$DEB/usr/local/bin/volumes-test" <<'VOLTEST'
#!/bin/sh
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    V=/var/tmp/vol-$rt
    rm -rf $V $V-ro && mkdir -p $V $V-ro && echo volume-data-42 >$V-ro/f
    podman $flag run -d --name vol-$rt --add-host db.example:10.1.2.3 \
        -v $V:/data -v $V-ro:/ro:ro localhost/busybox sh -c '
            grep db.example /etc/hosts | tr -s "\t " " "
            cat /ro/f
            touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused
            echo from-container >/made-in-container
            echo from-container >/data/out
            i=0
            while [ ! -f /data/from-host ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
            cat /data/from-host 2>/dev/null || echo host-write-not-seen' >/dev/null || exit 1
    i=0
    while [ ! -f $V/out ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i + 1)); done
    echo "$rt host sees: $(cat $V/out 2>/dev/null || echo nothing)"
    echo "$rt diff: $(podman diff vol-$rt | grep made-in-container | tr '\n' ' ')"
    echo from-host >$V/from-host
    echo "$rt exit: $(podman wait vol-$rt)"
    podman logs vol-$rt | sed "s/^/$rt says: /"
    podman rm vol-$rt >/dev/null
done
VOLTEST
chmod 755 "$DEB/usr/local/bin/volumes-test"
section podman-volumes /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/volumes-test

# podman's bridge network (CNI: bridge, portmap, firewall on cni-podman0, 10.88.0.0/16), each
# runtime in turn: the container's eth0 address, a published port (-p) from 127.0.0.1 and from
# the bridge gateway, the CNI NAT rules, container -> host TCP to a listener on the gateway.
# containers.conf's default is netns = "none", which silently drops -p: --network bridge is
# needed. Lines start with the runtime name, so the two runtimes' lines compare.
cat >"$DEB/usr/local/bin/network-test" <<'NETTEST'
#!/bin/sh
T="timeout -s KILL 120"
GW=10.88.0.1
# get URL: the first line wget fetched ("" when it failed), retried for 10 s.
get() {
    i=0
    while [ $i -lt 20 ]; do
        out=$(timeout -s KILL 5 busybox wget -qO- "$1" 2>/dev/null | head -n1)
        [ -n "$out" ] && { echo "$out"; return 0; }
        sleep 0.5
        i=$((i + 1))
    done
    return 1
}
port=18080
lport=18090
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"

    addr=$($T podman $flag run --rm --network bridge localhost/busybox ip -4 addr show dev eth0 2>&1 |
        sed -n 's/.*inet \([0-9.]*\/[0-9]*\).*/\1/p')
    echo "$rt eth0: ${addr:-none}"

    $T podman $flag run -d --name net-$rt --network bridge -p $port:80 localhost/busybox \
        httpd -f -p 80 -h /etc >/var/tmp/net-$rt.out 2>&1 || sed "s/^/$rt run -d: /" /var/tmp/net-$rt.out
    ip=$(podman inspect -f '{{.NetworkSettings.IPAddress}}' net-$rt 2>/dev/null)
    echo "$rt ports: $(podman ps --filter name=net-$rt --format '{{.Ports}}')"
    for to in 127.0.0.1:$port $GW:$port; do
        via=${to%:*}
        [ "$(get http://$to/passwd)" = "root:x:0:0:root:/root:/bin/sh" ] && r=ok || r=failed
        echo "$rt published port via $via: $r"
    done
    if [ -n "$ip" ]; then
        [ "$(get http://$ip:80/passwd)" = "root:x:0:0:root:/root:/bin/sh" ] && r=ok || r=failed
    else
        r="no address"
    fi
    echo "$rt container address port 80: $r"
    nat=$(iptables -t nat -S 2>&1)
    echo "$nat" | grep -q -- "--dport $port -j DNAT --to-destination $ip:80" && r=yes || r=no
    echo "$rt nat dnat: $r"
    echo "$nat" | grep -qE -- "^-A POSTROUTING -s $ip/32 .* -j CNI-" && r=yes || r=no
    echo "$rt nat masquerade: $r"
    podman rm -f -t 0 net-$rt >/dev/null 2>&1

    # container -> host: a listener in the host's netns on the gateway address.
    rm -f /var/tmp/nc-$rt.got
    echo host-says-hi >/var/tmp/nc-hi
    timeout -s KILL 60 busybox nc -l -p $lport </var/tmp/nc-hi >/var/tmp/nc-$rt.got 2>&1 &
    lpid=$!
    sleep 1
    got=$($T podman $flag run --rm --network bridge localhost/busybox \
        sh -c "echo ctr-says-hi-$rt | nc -w 5 $GW $lport" 2>&1)
    kill $lpid 2>/dev/null
    wait $lpid 2>/dev/null
    [ "$(cat /var/tmp/nc-$rt.got)" = "ctr-says-hi-$rt" ] && [ "$got" = host-says-hi ] && r=ok ||
        r="failed (host got: $(head -c 80 /var/tmp/nc-$rt.got | tr '\n' ' '); container got: $(echo "$got" | head -c 200 | tr '\n' ' '))"
    echo "$rt container to host: $r"
done
NETTEST
chmod 755 "$DEB/usr/local/bin/network-test"
section podman-network /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/network-test

# Frames to a guest, rate limited by config.toml's rx_rate_limiter_max_rate (Kata's key, in
# bits/s): a container fetches 4 MiB over HTTP from a server on the bridge gateway, timed and
# counted inside the container, under runc, under ember unlimited, then under ember at 8 Mbit/s
# (1 MiB/s).
cat >"$DEB/usr/local/bin/net-limit-test" <<'NLTEST'
#!/bin/sh
GW=10.88.0.1
hport=18093
mkdir -p /var/tmp/www
dd if=/dev/zero of=/var/tmp/www/big bs=64k count=64 2>/dev/null
timeout -s KILL 400 busybox httpd -f -p $hport -h /var/tmp/www >/dev/null 2>&1 &
hpid=$!
sleep 1
fetch() { # LABEL [podman flags]
    label=$1
    shift
    out=$(timeout -s KILL 180 podman "$@" run --rm --network bridge localhost/busybox sh -c \
        "a=\$(cut -d' ' -f1 /proc/uptime); n=\$(wget -q -O - http://$GW:$hport/big | wc -c); b=\$(cut -d' ' -f1 /proc/uptime); echo \$n \$a \$b" 2>&1 | tail -n 1)
    echo "$label: $(echo "$out" | awk '{printf "%d bytes in %.1f s", $1, $3 - $2}')"
}
fetch runc
fetch "ember unlimited" --runtime /usr/local/bin/ember
mkdir -p /etc/ember
printf '[hypervisor]\nrx_rate_limiter_max_rate = 8388608\n' >/etc/ember/config.toml
fetch "ember limited" --runtime /usr/local/bin/ember
rm -f /etc/ember/config.toml
kill $hpid 2>/dev/null
wait $hpid 2>/dev/null
# (the server's end by SIGTERM is not the test's)
exit 0
NLTEST
chmod 755 "$DEB/usr/local/bin/net-limit-test"
section podman-net-limit /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/net-limit-test

# A container that floods podman's bridge with UDP as fast as it can, no rate limiter: under
# runc, then under ember (its VM's virtio-net tx as fast as the guest fills it). Meanwhile
# another container's exec and the flooding container's own exec (its VM's vsock, served by
# the same device loop as the net device) answer, and the bridge counts what arrived.
cat >"$DEB/usr/local/bin/net-flood-test" <<'NFTEST'
#!/bin/sh
GW=10.88.0.1
[ -x /usr/local/bin/io-bench ] || { echo "no io-bench in the guest image"; exit 1; }
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    other=$(podman $flag run -d localhost/busybox sleep 1000)
    flood=$(podman $flag run -d --network bridge -v /usr/local/bin/io-bench:/io-bench:ro \
        localhost/busybox /io-bench udp-flood --to $GW:9 --secs 20)
    n=0
    until podman logs "$flood" 2>/dev/null | grep -q "udp-flood: sending" || [ $n -ge 120 ]; do
        sleep 1
        n=$((n + 1))
    done
    dev=$(ip -o -4 addr show | awk -v gw="$GW/" 'index($4, gw) == 1 {print $2}')
    rx0=$(cat "/sys/class/net/$dev/statistics/rx_packets")
    for i in 1 2; do
        echo "$rt exec in another container while one floods: $(timeout 90 podman exec "$other" echo alive-$i 2>&1)"
        echo "$rt exec in the flooding container: $(timeout 90 podman exec "$flood" echo own-alive-$i 2>&1)"
    done
    rx1=$(cat "/sys/class/net/$dev/statistics/rx_packets")
    echo "$rt bridge $dev received $((rx1 - rx0)) packets during the execs"
    timeout 120 podman wait "$flood" >/dev/null
    echo "$rt flood: $(podman logs "$flood" 2>&1 | grep 'udp-flood: sent')"
    echo "$rt host after the flood: $(timeout 90 podman exec "$other" echo alive-after 2>&1)"
    podman rm -f -t 0 "$flood" "$other" >/dev/null
done
NFTEST
chmod 755 "$DEB/usr/local/bin/net-flood-test"
section podman-net-flood /tmp/dch /usr/local/bin/watched 600 /usr/local/bin/net-flood-test

# linux.resources, beside runc: the container's cgroup limits (same files, same values), and
# with ember the VM's size (memory = limit + overhead, vCPUs = ceil(quota / period)).
cat >"$DEB/usr/local/bin/resources-test" <<'RESTEST'
#!/bin/sh
cat >/var/tmp/show-limits <<'SHOW'
echo memory.max $(cat /sys/fs/cgroup/memory.max)
echo cpu.max $(cat /sys/fs/cgroup/cpu.max)
echo pids.max $(cat /sys/fs/cgroup/pids.max)
echo memtotal_kib $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2)
echo nproc $(nproc)
SHOW
rc=0
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    podman $flag run --rm --memory 1g --cpus 2 --pids-limit 100 -v /var/tmp/show-limits:/show:ro \
        localhost/busybox sh /show | sed "s/^/$rt /"
done
# On the host: the cgroup of the process podman knows as the container's (runc's container
# init; ember's shim, beside its pod process) is the spec's cgroupsPath, limited, and gone after
# the container.
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    id=$(podman $flag run -d --memory 512m localhost/busybox sleep 1000)
    pid=$(podman inspect -f '{{.State.Pid}}' "$id")
    cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
    echo "$rt host cgroup: $(echo "$cg" | sed "s/$id/ID/")"
    echo "$rt host memory.max: $(cat "/sys/fs/cgroup$cg/memory.max")"
    echo "$rt host procs: $(wc -l <"/sys/fs/cgroup$cg/cgroup.procs")"
    podman $flag rm -f -t 0 "$id" >/dev/null
    [ -d "/sys/fs/cgroup$cg" ] && echo "$rt host cgroup left" || echo "$rt host cgroup removed"
done
RESTEST
chmod 755 "$DEB/usr/local/bin/resources-test"
section podman-resources /tmp/dch /usr/local/bin/watched 600 /usr/local/bin/resources-test

# config.json applied as runc applies it: ONE container with capabilities, hostname, a sysctl
# (kernel.msgmax: the IPC namespace is the container's own, unlike net.* under netns none),
# oom_score_adj, rlimits, an additional group, a read-only root, a device node, a masked path
# and no_new_privs, under each runtime in turn. Every line starts with the runtime name, so an
# e2e test can assert that the runc lines and the ember lines are equal.
cat >"$DEB/usr/local/bin/fidelity-test" <<'FIDTEST'
#!/bin/sh
T="timeout -s KILL 120"
for rt in runc ember; do
    flag="--runtime runc"
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    $T podman $flag run --rm --cap-drop ALL --cap-add NET_ADMIN --hostname h1 \
        --sysctl kernel.msgmax=4096 --oom-score-adj 100 --ulimit nofile=1000:2000 \
        --group-add 5 --read-only --device /dev/null:/dev/mynull \
        --security-opt mask=/etc/passwd --security-opt no-new-privileges \
        localhost/busybox sh -c '
            grep -E "^(Cap|NoNewPrivs)" /proc/self/status | tr -s "\t " " "
            echo "hostname: $(hostname)"
            echo "msgmax: $(cat /proc/sys/kernel/msgmax)"
            echo "oom_score_adj: $(cat /proc/self/oom_score_adj)"
            echo "nofile: $(ulimit -Sn) $(ulimit -Hn)"
            echo "groups: $(id -G)"
            touch /x 2>/dev/null && echo "root: writable" || echo "root: read-only"
            touch /tmp/x 2>/dev/null && echo "tmp: writable" || echo "tmp: read-only"
            echo "mynull: $(stat -c "%F %t:%T %a" /dev/mynull 2>&1)"
            echo "passwd bytes: $(wc -c </etc/passwd)"
            echo "kcore bytes: $( (wc -c </proc/kcore) 2>/dev/null)"
            (echo 1 >/proc/sys/kernel/msgmax) 2>/dev/null && echo "proc/sys: writable" ||
                echo "proc/sys: read-only"
            echo "mqueue mounts: $(grep -c " /dev/mqueue " /proc/self/mountinfo)"
            echo "shm: $(grep " /dev/shm " /proc/self/mountinfo | grep -o "size=[0-9]*k")"
            echo "root flags: $(awk "\$5 == \"/\" {print \$6}" /proc/self/mountinfo |
                tr , "\n" | grep -E "^(nosuid|nodev|noexec)$" | sort | tr "\n" " ")"
        ' 2>&1 | sed "s/^/$rt /"
    # The device controller (with MKNOD, which podman's default capabilities lack): any node
    # may be made, only the allowed ones opened.
    $T podman $flag run --rm --cap-add MKNOD localhost/busybox sh -c '
        err() { head -c 1 "$1" 2>&1 >/dev/null | sed "s/.*: //"; }
        mknod /b8 b 8 0 && echo "mknod b 8:0: ok"
        echo "open b 8:0: $(err /b8)"
        mknod /dev/c11 c 1 1 && echo "mknod c 1:1: ok"
        echo "open c 1:1: $(err /dev/c11)"
        mknod /tmp/c13 c 1 3 && echo "open c 1:3 made in the rootfs: $(err /tmp/c13)ok"
        echo "open /dev/null: $(err /dev/null)ok"
        echo "open /dev/urandom: $(err /dev/urandom)ok"
    ' 2>&1 | sed "s/^/$rt /"
    # --privileged: every capability, the host's devices as nodes (under ember: made in the
    # guest, devpts's own ptmx kept), /sys read-write.
    $T podman $flag run --rm --privileged localhost/busybox sh -c '
        grep -E "^Cap(Eff|Bnd)" /proc/self/status | tr -s "\t " " "
        echo "privileged sys: $(awk "\$2 == \"/sys\" {print \$4}" /proc/self/mounts | cut -d, -f1)"
        echo "privileged kvm node: $(stat -c "%F %t:%T" /dev/kvm 2>&1)"
    ' 2>&1 | sed "s/^/$rt /"
    # A command that is not there (podman: 127) or cannot be run (126): runc's create fails.
    for cmd in nosuchcmd /no/such/cmd /etc/passwd; do
        $T podman $flag run --rm localhost/busybox $cmd >/dev/null 2>&1
        echo "$rt command $cmd: exit=$?"
    done
    # The host's UTS namespace (--uts host, as a CRI hostNetwork pod): the host's name (under
    # ember the VM takes it).
    echo "$rt uts host: $($T podman $flag run --rm --uts host localhost/busybox hostname 2>&1)"
    # podman update (`runc update --resources`): new limits in a running container's cgroup.
    $T podman $flag run -d --name upd-$rt --memory 256m --pids-limit 100 localhost/busybox \
        sleep 1000 >/dev/null
    out=$($T podman $flag update --memory 128m --cpu-shares 512 upd-$rt 2>&1) ||
        echo "$rt update failed: $out"
    echo "$rt update: $($T podman $flag exec upd-$rt cat /sys/fs/cgroup/memory.max \
        /sys/fs/cgroup/cpu.weight 2>&1 | tr "\n" " ")"
    podman rm -f -t 0 upd-$rt >/dev/null
    # A user without HOME: podman gives an unknown uid a passwd entry whose home is the
    # workdir, and runc sets HOME from the container's passwd.
    $T podman $flag run --rm --user 1000:1000 --workdir /tmp localhost/busybox \
        sh -c 'echo "home: $HOME"' 2>&1 | sed "s/^/$rt /"
    # The engine's copies into and out of a running container (podman cp joins the mount
    # namespace of the pid the runtime reports): they land in its rootfs and its volume, and
    # never on the host.
    V=/var/tmp/fid-vol-$rt
    rm -rf $V /tmp/cp-probe-$rt && mkdir -p $V && echo cp-in >/var/tmp/cp-src
    {
        $T podman $flag run -d --name cp-$rt -v $V:/vol localhost/busybox sleep 1000 >/dev/null
        podman cp /var/tmp/cp-src cp-$rt:/tmp/cp-probe-$rt &&
            echo "cp in: $(podman exec cp-$rt cat /tmp/cp-probe-$rt)"
        podman cp /var/tmp/cp-src cp-$rt:/vol/in-vol && echo "cp into the volume: $(cat $V/in-vol)"
        podman exec cp-$rt sh -c 'echo made-inside >/tmp/out'
        rm -f /var/tmp/cp-out
        podman cp cp-$rt:/tmp/out /var/tmp/cp-out && echo "cp out: $(cat /var/tmp/cp-out)"
        echo "the host's /tmp got the copy: $([ -e /tmp/cp-probe-$rt ] && echo yes || echo no)"
        podman rm -f -t 0 cp-$rt >/dev/null
    } 2>&1 | sed "s/^/$rt /"
    # A user namespace (--uidmap): root inside is uid 100000 outside, so its files in a
    # volume are; a device node is not its to make (the runtime binds /dev/null); podman's
    # nofile limit is set from outside; an exec joins the namespace with its own user.
    V=/var/tmp/fid-userns-$rt
    rm -rf $V && mkdir -p $V && chmod 1777 $V
    {
        $T podman $flag run -d --name uns-$rt --uidmap 0:100000:65536 --gidmap 0:100000:65536 \
            -v $V:/vol localhost/busybox sleep 1000 >/dev/null
        podman exec uns-$rt sh -c '
            echo "userns uid_map: $(tr -s " " </proc/self/uid_map | sed "s/^ //")"
            echo "userns gid_map: $(tr -s " " </proc/self/gid_map | sed "s/^ //")"
            echo "userns id: $(id -u):$(id -g)"
            echo "userns /bin/sh owner: $(stat -c %u:%g /bin/sh)"
            touch /vol/by-root && echo "userns volume write: ok"
            echo x >/dev/null && echo "userns /dev/null: ok"
            echo "userns nofile: $(ulimit -Hn)"
            echo "userns proc and sys: $(ls /proc/1/status /sys/kernel/mm >/dev/null && echo ok)"'
        podman exec --user 1000:1000 uns-$rt sh -c 'echo "userns exec id: $(id -u)"; touch /vol/by-1000'
        echo "userns volume owners: $(stat -c %u:%g $V/by-root $V/by-1000 | tr "\n" " ")"
        echo "userns exec -t: $(podman exec -t uns-$rt tty | tr -d '\r')"
        podman rm -f -t 0 uns-$rt >/dev/null
        # --userns=auto: podman picks the range from the subordinate ids of "containers".
        grep -q '^containers:' /etc/subuid || {
            echo containers:200000:300000 >>/etc/subuid
            echo containers:200000:300000 >>/etc/subgid
        }
        echo "userns auto: $($T podman $flag run --rm --userns=auto localhost/busybox \
            sh -c 'tr -s " " </proc/self/uid_map; id -u' | tr "\n" " ")"
        # --privileged lists the host's devices; in a user namespace they are bound (runc
        # binds the host's nodes; ember the VM's, or one the agent made for a device the VM
        # lacks, such as /dev/kvm).
        echo "userns privileged: $($T podman $flag run --rm --privileged \
            --uidmap 0:100000:65536 --gidmap 0:100000:65536 localhost/busybox \
            sh -c 'stat -c "%t:%T" /dev/kvm; id -u' 2>&1 | tr "\n" " ")"
    } 2>&1 | sed "s/^/$rt /"
done
FIDTEST
chmod 755 "$DEB/usr/local/bin/fidelity-test"
section podman-fidelity /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/fidelity-test

section cri-pod /tmp/dch /usr/local/bin/watched 600 /usr/local/bin/cri-pod-test

# A podman pod (and `--ipc|--network|--pid container:NAME`), under runc and then under ember:
# what its containers share — localhost, the pod's hostname, the kernel, the IPC namespace and
# /dev/shm, one eth0, the published port, a shared PID namespace, a user namespace — and a
# clean `pod stop`.
# Every line starts with the runtime name, for the e2e test's runc/ember comparison.
# (--share-parent=false: the pod cgroup podman's cgroupfs manager makes on this host's cgroup
# v2 gets a device program that refuses every device, /dev/null included — runc's container
# fails on it exactly as ember's VMM does.)
cat >"$DEB/usr/local/bin/pod-test" <<'PODTEST'
#!/bin/sh
T="timeout -s KILL 120"
I=localhost/busybox
for rt in runc ember; do
    P="podman --runtime runc"
    [ $rt = ember ] && P="podman --runtime /usr/local/bin/ember"
    {
        $T $P pod create --name pod-$rt --share-parent=false --hostname podhost \
            -p 18182:80 >/dev/null || exit 1
        $T $P run -d --pod pod-$rt --name web-$rt $I sh -c '
            mkdir -p /www && echo served-in-the-pod >/www/index.html
            cat /proc/sys/kernel/random/boot_id >/www/boot
            readlink /proc/self/ns/ipc >/www/ipc
            echo shm-of-web >/dev/shm/x
            exec httpd -f -p 80 -h /www' >/dev/null || exit 1
        n=0
        until $T $P exec web-$rt wget -q -O /dev/null http://127.0.0.1/ 2>/dev/null; do
            n=$((n + 1)); [ $n -gt 60 ] && { echo "web did not serve"; exit 1; }
            sleep 0.5
        done
        $T $P run --rm --pod pod-$rt $I sh -c '
            echo "localhost: $(wget -q -O - http://127.0.0.1/)"
            echo "hostname: $(hostname)"
            [ "$(wget -q -O - http://127.0.0.1/boot)" = "$(cat /proc/sys/kernel/random/boot_id)" ] &&
                echo "kernel: the same" || echo "kernel: another"
            [ "$(wget -q -O - http://127.0.0.1/ipc)" = "$(readlink /proc/self/ns/ipc)" ] &&
                echo "ipc: the same" || echo "ipc: another"
            echo "shm: $(cat /dev/shm/x 2>&1)"
            echo "eth0 addresses: $(ip -4 -o addr show eth0 | wc -l)"'
        echo "published: $($T busybox wget -q -O - http://127.0.0.1:18182/ 2>&1)"
        echo "pod: $($P pod ps --format '{{.Status}} {{.NumberOfContainers}}' --filter name=pod-$rt)"
        $T $P pod stop -t 2 pod-$rt >/dev/null 2>/var/tmp/pod-stop.err
        echo "pod stop: rc=$? $(grep -c level=error /var/tmp/pod-stop.err) errors"
        echo "pod after stop: $($P pod ps --format '{{.Status}}' --filter name=pod-$rt)"
        $T $P pod rm -f pod-$rt >/dev/null
        # A pod sharing its PID namespace: the member sees the infra's and web's processes.
        $T $P pod create --name pidpod-$rt --share-parent=false --share pid,ipc,net,uts >/dev/null
        $T $P run -d --pod pidpod-$rt $I sleep 1000 >/dev/null
        echo "pid pod: $($T $P run --rm --pod pidpod-$rt $I ps -o comm | sort | tr '\n' ' ')"
        $T $P pod rm -f -t 0 pidpod-$rt >/dev/null
        # A pod with a user namespace (--userns=auto): its members join the infra's, as root
        # there, their files on a volume owned by the mapped uid.
        grep -q '^containers:' /etc/subuid || {
            echo containers:200000:300000 >>/etc/subuid
            echo containers:200000:300000 >>/etc/subgid
        }
        U=/var/tmp/upod-$rt
        rm -rf $U && mkdir -p $U && chmod 777 $U
        $T $P pod create --name upod-$rt --share-parent=false --userns=auto >/dev/null
        $T $P run -d --pod upod-$rt --name uweb-$rt $I sleep 1000 >/dev/null
        u1=$($T $P exec uweb-$rt readlink /proc/self/ns/user)
        $T $P run --rm --pod upod-$rt -v $U:/vol $I sh -c '
            echo "userns pod id: $(id -u)"
            readlink /proc/self/ns/user >/vol/ns
            tr -s " " </proc/self/uid_map >/vol/map
            touch /vol/f
            ls /proc/1/status >/dev/null && echo "userns pod proc: ok"'
        [ "$(cat $U/ns)" = "$u1" ] && echo "userns pod namespace: the same" ||
            echo "userns pod namespace: another"
        [ "$(stat -c %u $U/f)" = "$(awk '{print $2}' $U/map)" ] &&
            echo "userns pod file owner: the mapped root" ||
            echo "userns pod file owner: $(stat -c %u $U/f), map $(cat $U/map)"
        $T $P pod rm -f -t 0 upod-$rt >/dev/null
        # Joiners of a container that is not in a pod.
        $T $P run -d --name solo-$rt $I sh -c '
            echo shm-of-solo >/dev/shm/y
            mkdir -p /www && echo served-by-solo >/www/index.html
            exec httpd -f -p 80 -h /www' >/dev/null
        sleep 2
        echo "ipc container: $($T $P run --rm --ipc container:solo-$rt $I cat /dev/shm/y 2>&1)"
        echo "network container: $($T $P run --rm --network container:solo-$rt $I \
            wget -q -O - http://127.0.0.1/ 2>&1)"
        echo "pid container: $($T $P run --rm --pid container:solo-$rt $I ps -o comm | sort | tr '\n' ' ')"
        $T $P rm -f -t 0 solo-$rt >/dev/null
        [ $rt = ember ] && echo "pods left: $(ls /run/ember/@pods 2>/dev/null | wc -l)"
    } 2>&1 | sed "s/^/$rt /"
done
PODTEST
chmod 755 "$DEB/usr/local/bin/pod-test"
section podman-pod /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/pod-test


# -t: podman hands the runtime a console socket; the container's stdio is a pty (under ember, in
# the guest) sized as podman's terminal, for `run -it` and `exec -t`; runc first, same run.
# podman runs under script(1), for a terminal of its own (stty gives it a size); the ^@ its
# terminal echoes at the start (the same under both runtimes) is stripped.
cat >"$DEB/usr/local/bin/tty-test" <<'TTYTEST'
#!/bin/sh
for rt in runc ember; do
    R=$rt; [ $rt = ember ] && R=/usr/local/bin/ember
    out=$(script -qefc "stty rows 41 cols 97; podman --runtime $R run --rm -it localhost/busybox \
        sh -c 'sleep 1; tty; stty size; test -t 0 && echo stdin-is-a-tty; exit 4'" /dev/null)
    code=$?
    printf '%s\n' "$out" | tr -d '\r' | sed "s/\^@//g; s/^/$rt run: /"
    echo "$rt run: exit=$code"
    podman --runtime $R run -d --name tty-$rt localhost/busybox sleep 1000 >/dev/null || exit 1
    out=$(script -qefc "stty rows 33 cols 88; podman exec -it tty-$rt \
        sh -c 'sleep 1; tty; stty size; exit 6'" /dev/null)
    code=$?
    printf '%s\n' "$out" | tr -d '\r' | sed "s/\^@//g; s/^/$rt exec: /"
    echo "$rt exec: exit=$code"
    podman rm -f -t 0 tty-$rt >/dev/null
done
TTYTEST
chmod 755 "$DEB/usr/local/bin/tty-test"
section podman-tty /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/tty-test

section podman-exec /tmp/dch /usr/local/bin/watched 900 sh -c '
    podman --runtime /usr/local/bin/ember run -d --name web localhost/busybox sleep 1000 >/dev/null || exit 1
    podman exec web echo from-exec
    podman exec web sh -c "exit 5"
    echo "exec-exit=$?"
    podman ps --format "{{.Names}} {{.Status}}"
    id=$(podman inspect -f "{{.ID}}" web)
    echo "pod status lists web: $(ember pod status --json $id | grep -c "\"id\": \"$id\"")"'

# After stop and rm: no ember process (shim or pod VMM) and no ember state may remain.
section podman-stop-rm /tmp/dch /usr/local/bin/watched 600 sh -c '
    podman stop -t 3 web >/dev/null; echo "stop=$?"
    podman rm web >/dev/null; echo "rm=$?"
    sleep 1
    echo "ember processes: $(pgrep -c -f "^/usr/local/bin/ember" || true)"
    echo "state dirs: $(ls /run/ember 2>/dev/null | grep -vc "^@pods$" || true)"
    echo "pods: $(ls /run/ember/@pods 2>/dev/null | wc -l)"'

section ctr-hello /tmp/dch /usr/local/bin/watched 600 sh -c '
    ember-debian-init containerd || exit 1
    ctr image import --snapshotter native /var/lib/ember-oci/busybox-oci.tar >/dev/null || exit 1
    ctr run --rm --snapshotter native --runc-binary /usr/local/bin/ember \
        docker.io/library/busybox:latest hello1 echo hello'

# containerd's shim v2: ember as runtime io.containerd.ember.v2 (containerd-shim-ember-v2, a
# link to ember, on containerd's PATH). Exit code, exec, kill, delete; then nothing may remain.
cat >"$DEB/usr/local/bin/shim-v2-test" <<'SHIMV2'
#!/bin/sh
ln -sf /usr/local/bin/ember /usr/local/bin/containerd-shim-ember-v2
ember-debian-init containerd || exit 1
R="--runtime io.containerd.ember.v2 --snapshotter native"
I=docker.io/library/busybox:latest
rc=0
ctr run --rm $R $I v2a sh -c "echo hello-v2; exit 3"
code=$?
echo "v2-exit=$code"
[ $code = 3 ] || rc=1
ctr run -d $R $I v2b sleep 1000 >/dev/null || exit 1
# The shim is the pod's process: the VM runs on its threads (vCPUs, control), no `ember pod
# __vmm` of its own; the pod record names the shim, marked hosted.
pod=$(ls /run/ember/@pods | head -1)
st=$(ember pod status --json "$pod")
vpid=$(printf '%s\n' "$st" | sed -n 's/.*"vmm_pid": *\([0-9]*\).*/\1/p' | head -1)
echo "v2 pod processes of their own: $(pgrep -c -f 'pod __vmm' || true)"
printf '%s\n' "$st" | grep -q '"vmm_hosted": *true' && echo "v2 pod hosted: yes"
tr '\0' '\n' <"/proc/$vpid/environ" | grep -qx EMBER_SHIM_V2=1 && echo "v2 VMM process is the shim"
echo "v2 shim threads: $(cat /proc/$vpid/task/*/comm | grep -E '^(vcpu0|pod-vmm|control)$' | sort | tr '\n' ' ')"
# The VMM's lines are the shim's: in containerd's log (the shim's log FIFO).
grep -q "VMM hosted by process $vpid starting" /run/containerd.log &&
    echo "v2 containerd's log has the VMM's lines"
ctr task exec --exec-id e1 v2b sh -c "echo from-v2-exec; exit 4"
code=$?
echo "v2-exec-exit=$code"
[ $code = 4 ] || rc=1
# Its usage (containerd's Stats): processes, memory and CPU time of its cgroup in the guest.
ctr task metrics v2b | awk '$1 == "pids.current" || $1 == "memory.usage_in_bytes" ||
    $1 == "cpuacct.usage" { print "v2 metrics " $1 "=" $2 }'
# A signal to an exec'd process ends it, not the task.
ctr task exec --exec-id e2 v2b sleep 1000 &
n=0
until [ "$(ctr task ps v2b | wc -l)" -ge 3 ]; do
    n=$((n + 1)); [ $n -gt 300 ] && { echo "e2 did not start"; exit 1; }
    sleep 0.2
done
ctr task kill --exec-id e2 -s TERM v2b
wait $!
echo "v2-exec-killed=$?"
# Terminal execs and tasks: a pty in the guest, sized as ctr's terminal (ResizePty); ctr runs
# under script(1), for a terminal of its own.
out=$(script -qefc "stty rows 41 cols 97; ctr task exec -t --exec-id e3 v2b \
    sh -c 'sleep 1; tty; stty size; exit 6'" /dev/null)
echo "v2-tty-exec-exit=$?"
printf '%s\n' "$out" | tr -d '\r' | sed 's/\^@//g; s/^/v2 tty exec: /'
out=$(script -qefc "stty rows 33 cols 88; ctr run -t --rm $R $I v2t \
    sh -c 'sleep 1; tty; stty size; exit 7'" /dev/null)
echo "v2-tty-run-exit=$?"
printf '%s\n' "$out" | tr -d '\r' | sed 's/\^@//g; s/^/v2 tty run: /'
ctr task kill -s KILL v2b
n=0
while ! ctr task ls | grep -q "^v2b .*STOPPED"; do
    n=$((n + 1)); [ $n -gt 300 ] && { echo "v2b did not stop"; ctr task ls; exit 1; }
    sleep 0.2
done
ctr task delete v2b >/dev/null; echo "v2-delete=$?"
ctr container rm v2b
# A shim killed -9 takes its pod's VM with it (the VM is the shim's); containerd's cleanup
# (`shim delete`) removes the rest: pod, state, the pod's cgroup.
ctr run -d $R $I v2k sleep 1000 >/dev/null || exit 1
kpid=$(ember pod status --json v2k | sed -n 's/.*"vmm_pid": *\([0-9]*\).*/\1/p' | head -1)
kcg=$(sed -n 's/^0:://p' "/proc/$kpid/cgroup")
echo "v2 shim cgroup: $kcg"
kill -9 "$kpid"
n=0
while ctr task ls | grep -q "^v2k .*RUNNING"; do
    n=$((n + 1)); [ $n -gt 300 ] && { echo "v2k runs on after its shim died"; exit 1; }
    sleep 0.2
done
ctr task delete v2k >/dev/null 2>&1
ctr container rm v2k
echo "v2 killed shim: cgroup left $(ls -d "/sys/fs/cgroup$kcg" 2>/dev/null | wc -l)"
sleep 1
echo "v2 ember processes: $(pgrep -c -f "^/usr/local/bin/ember" || true)"
echo "v2 pods: $(ls /run/ember/@pods 2>/dev/null | wc -l)"
echo "v2 state dirs: $(ls /run/ember 2>/dev/null | grep -vc "^@pods$" || true)"
echo "v2 task mounts: $(grep -c "io.containerd.runtime.v2.task" /proc/mounts || true)"
exit $rc
SHIMV2
chmod 755 "$DEB/usr/local/bin/shim-v2-test"
section ctr-shim-v2 /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/shim-v2-test

# containerd's runc shim running ember keeps ember's log (`--log <bundle>/log.json`) in the
# bundle, which a failed `ctr run --rm` deletes: this wrapper, given to ctr as the runc binary,
# points that file at a kept copy first, so a failure's log can be shown.
cat >"$DEB/usr/local/bin/ember-kept-log" <<'KEPT'
#!/bin/sh
log= prev=
for a; do [ "$prev" = --log ] && log=$a; prev=$a; done
if [ -n "$log" ] && ! [ -e "$log" ]; then
    mkdir -p /var/tmp/ember-runc-logs
    kept=/var/tmp/ember-runc-logs/$(printf '%s' "$log" | tr / _)
    : >>"$kept" && ln -s "$kept" "$log"
fi
exec /usr/local/bin/ember "$@"
KEPT
chmod 755 "$DEB/usr/local/bin/ember-kept-log"

# `ctr run --cni`: ctr configures the task's network namespace (/proc/<task pid>/ns/net, CNI's
# "podman" bridge) between create and start. runc (containerd's runc shim) first, then ember's
# shim v2, then containerd's runc shim with ember as its runc, same run: eth0 in the bridge's
# subnet, a default route, the gateway answers; the host's own namespace untouched (its
# interfaces counted before and after).
cat >"$DEB/usr/local/bin/ctr-cni-test" <<'CTRCNI'
#!/bin/sh
ember-debian-init containerd || exit 1
# ctr looks for CNI's plugins in /opt/cni/bin; Debian has them in /usr/lib/cni.
mkdir -p /opt/cni && ln -sfn /usr/lib/cni /opt/cni/bin
host() { echo "$(ip -o link | grep -c ": eth0[:@]") eth0, $(ip route | grep -c "^default") default routes"; }
before=$(host)
I=docker.io/library/busybox:latest
rc=0
for rt in runc ember runc-shim-ember; do
    case $rt in
        runc-shim-ember) R="--runtime io.containerd.runc.v2 --runc-binary /usr/local/bin/ember-kept-log" ;;
        *) R="--runtime io.containerd.$rt.v2" ;;
    esac
    out=$(ctr run --rm --cni --snapshotter native $R $I cni-$rt sh -c '
        echo "eth0: $(ip -4 -o addr show eth0 | awk "{print \$4}" | cut -d. -f1-2)"
        echo "default routes: $(ip route | grep -c "^default via")"
        ping -c 1 -W 5 $(ip route | awk "/^default via/ {print \$3}") >/dev/null &&
            echo "the gateway answers"')
    code=$?
    printf '%s\n' "$out" | sed "s/^/$rt /"
    echo "$rt exit=$code"
    [ $code = 0 ] || rc=1
    [ $code = 0 ] || [ $rt != runc-shim-ember ] || {
        echo "--- ember's log under the runc shim"; tail -n 60 /var/tmp/ember-runc-logs/*cni-$rt*; }
done
echo "the host's namespace before: $before; after: $(host)"
exit $rc
CTRCNI
chmod 755 "$DEB/usr/local/bin/ctr-cni-test"
section ctr-cni /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/ctr-cni-test

# containerd beside runc: a bind mount written by the container is on the host, the host's
# file is seen inside; containerd's runc shim (plain runc) and ember's shim v2, same run.
cat >"$DEB/usr/local/bin/ctr-volumes-test" <<'CTRVOL'
#!/bin/sh
ember-debian-init containerd || exit 1
I=docker.io/library/busybox:latest
rc=0
for rt in runc ember; do
    R="--runtime io.containerd.runc.v2"
    [ $rt = ember ] && R="--runtime io.containerd.ember.v2"
    V=/var/tmp/ctrvol-$rt
    rm -rf $V && mkdir -p $V && echo host-data-7 >$V/in
    out=$(ctr run --rm --snapshotter native $R --mount type=bind,src=$V,dst=/data,options=rbind:rw \
        $I vol-$rt sh -c 'cat /data/in; echo from-ctr >/data/out; echo from-ctr-rootfs >/made')
    code=$?
    printf '%s\n' "$out" | sed "s/^/$rt says: /"
    echo "$rt exit=$code"
    [ $code = 0 ] || rc=1
    echo "$rt host sees: $(cat $V/out 2>/dev/null || echo nothing)"
done
exit $rc
CTRVOL
chmod 755 "$DEB/usr/local/bin/ctr-volumes-test"
section ctr-volumes /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/ctr-volumes-test

# containerd's resources beside runc: `ctr run --memory-limit 1g --cpus 2` under containerd's
# runc shim (plain runc), ember's shim v2 and the runc shim running ember, same run: the
# container's cgroup limits as runc sets them, and ember's VM sized by them.
cat >"$DEB/usr/local/bin/ctr-resources-test" <<'CTRRES'
#!/bin/sh
ember-debian-init containerd || exit 1
I=docker.io/library/busybox:latest
cat >/var/tmp/ctr-show-limits <<'SHOW'
cg=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)
echo memory.max $(cat $cg/memory.max)
echo cpu.max $(cat $cg/cpu.max)
echo memtotal_kib $(grep MemTotal /proc/meminfo | tr -s " " | cut -d" " -f2)
echo nproc $(nproc)
SHOW
rc=0
for rt in runc ember runc-shim-ember; do
    case $rt in
        runc) R="--runtime io.containerd.runc.v2" ;;
        ember) R="--runtime io.containerd.ember.v2" ;;
        runc-shim-ember) R="--runtime io.containerd.runc.v2 --runc-binary /usr/local/bin/ember-kept-log" ;;
    esac
    out=$(ctr run --rm --snapshotter native $R --memory-limit 1073741824 --cpus 2 \
        --mount type=bind,src=/var/tmp/ctr-show-limits,dst=/show,options=rbind:ro \
        --mount type=cgroup2,src=cgroup2,dst=/sys/fs/cgroup,options=ro:nosuid:nodev:noexec \
        $I res-$rt sh /show)
    code=$?
    printf '%s\n' "$out" | sed "s/^/$rt /"
    echo "$rt exit=$code"
    # containerd's log holds its shims' lines (ember's shim v2: its VMM's too).
    [ $code = 0 ] || { rc=1; echo "--- containerd.log (last 60 lines)"; tail -n 60 /run/containerd.log; }
    [ $code = 0 ] || [ $rt != runc-shim-ember ] || {
        echo "--- ember's log under the runc shim"; tail -n 60 /var/tmp/ember-runc-logs/*res-$rt*; }
done
exit $rc
CTRRES
chmod 755 "$DEB/usr/local/bin/ctr-resources-test"
section ctr-resources /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/ctr-resources-test

# containerd's CRI plugin driven as the kubelet drives it (rig/cri-test): a pod sandbox with
# two containers, execs, status, a container stop, the sandbox's stop and removal — with the
# RuntimeClass handler runc, then ember (its shim v2: one VM for the pod). Then nothing of the
# pod may remain: no ember process, pod, state, task mount or sandbox shm mount.
cat >"$DEB/usr/local/bin/cri-handlers-test" <<'CRIH'
#!/bin/sh
command -v ember-cri-test >/dev/null || { echo "ember-cri-test missing (scripts/build-guest-image.sh)"; exit 1; }
ln -sf /usr/local/bin/ember /usr/local/bin/containerd-shim-ember-v2
ember-debian-init containerd || exit 1
for img in busybox pause; do
    ctr -n k8s.io image import --snapshotter native /var/lib/ember-oci/$img-oci.tar >/dev/null || exit 1
done
# What the pod leaves is counted against what was there before it (an earlier section's
# leftovers are that section's failure, shown here but not counted).
procs() { pgrep -c -f "^/usr/local/bin/ember" || true; }
pods() { ls /run/ember/@pods 2>/dev/null | wc -l; }
dirs() { ls /run/ember 2>/dev/null | grep -vc "^@pods$" || true; }
p0=$(procs) d0=$(pods) s0=$(dirs)
[ "$p0$d0$s0" = 000 ] || echo "before the pods: $p0 ember processes, $d0 pods, $s0 state dirs"
rc=0
for h in runc ember; do
    ember-cri-test --handler $h || rc=1
    sleep 1
    echo "$h: ember processes left: $(($(procs) - p0))"
    echo "$h: pods left: $(($(pods) - d0))"
    echo "$h: state dirs left: $(($(dirs) - s0))"
    echo "$h: task mounts left: $(grep -c "io.containerd.runtime.v2.task/k8s.io" /proc/mounts || true)"
    echo "$h: sandbox mounts left: $(grep -c "io.containerd.grpc.v1.cri/sandboxes" /proc/mounts || true)"
done
[ $rc = 0 ] || tail -40 /run/containerd.log
exit $rc
CRIH
chmod 755 "$DEB/usr/local/bin/cri-handlers-test"
section cri-handlers /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/cri-handlers-test

# Template pods for the OCI face: `ember template create oci --oci` (the VM of a container
# without limits, with a NIC for podman's network) named in /etc/ember/config.toml; podman's
# containers then start by restore: exit code and the bridge network's address, as under
# runc; then `podman run --rm busybox true` with runc, ember booting and ember from the
# template, alternating.
cat >"$DEB/usr/local/bin/template-test" <<'TEMPLATE'
#!/bin/sh
up() { cut -d" " -f1 /proc/uptime; }
ember template create oci --oci || exit 1
ember template list
mkdir -p /etc/ember
printf '[runtime]\ntemplate = "oci"\n' >/etc/ember/config.toml
for rt in runc ember; do
    flag=""
    [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
    podman $flag run --name tmpl-$rt --network bridge localhost/busybox \
        sh -c 'ip -4 addr show eth0 | grep -o "inet 10[.0-9]*"; exit 3'
    echo "$rt exit=$?"
done
podman --runtime /usr/local/bin/ember run -d --name tmpl-live localhost/busybox sleep 300 >/dev/null
id=$(podman inspect -f '{{.ID}}' tmpl-live)
ember pod status --json "$id" | grep -q guest_made_its_own && echo "ember: started from the template"
podman rm -f tmpl-live >/dev/null
podman rm tmpl-runc tmpl-ember >/dev/null
for i in 1 2 3; do
    for mode in runc cold template; do
        flag="--runtime /usr/local/bin/ember"
        case $mode in
            runc) flag="" ;;
            cold) rm -f /etc/ember/config.toml ;;
            template) printf '[runtime]\ntemplate = "oci"\n' >/etc/ember/config.toml ;;
        esac
        t0=$(up)
        podman $flag run --rm localhost/busybox true
        rc=$?
        echo "template-bench mode=$mode run=$i rc=$rc wall_s=$(echo "$t0 $(up)" | awk "{printf \"%.2f\", \$2 - \$1}")"
    done
done
rm -f /etc/ember/config.toml
ember template delete oci
rmdir /run/ember/@templates 2>/dev/null
exit 0
TEMPLATE
chmod 755 "$DEB/usr/local/bin/template-test"
section podman-template /tmp/dch /usr/local/bin/watched 900 /usr/local/bin/template-test

# Bench: `podman run --rm IMAGE true` wall time with runc and with ember, then the phases of
# one ember create (the shim writes them to timings.json).
section oci-bench /tmp/dch /usr/local/bin/watched 1800 sh -c '
    up() { cut -d" " -f1 /proc/uptime; }
    for rt in runc ember; do
        flag=""
        [ $rt = ember ] && flag="--runtime /usr/local/bin/ember"
        for i in 1 2; do
            t0=$(up)
            podman $flag run --rm localhost/busybox true
            rc=$?
            echo "bench runtime=$rt run=$i rc=$rc wall_s=$(echo "$t0 $(up)" | awk "{printf \"%.2f\", \$2 - \$1}")"
        done
    done
    podman --runtime /usr/local/bin/ember create --name phases localhost/busybox true >/dev/null &&
        podman init phases >/dev/null &&
        echo "phases $(cat /run/ember/$(podman inspect -f "{{.ID}}" phases)/timings.json)"
    podman rm -f phases >/dev/null'

/tmp/dch ember-debian-init stop
sync
