# 30-pods: the pod and container API inside the virtual KVM host, one pod booted for most of it.
# Sourced by the host's /init after /rig/lib.sh. Containers use the guest's own busybox root
# (`--rootfs-guest-path /`); one more gets an ext2 disk declared in the pod config, filled by a
# first container and used as the rootfs of a second.
# Sections: pods-start, pods-containers-start, pods-exec, pods-ps, pods-exit-code, pods-kill,
# pods-pause-resume, pods-events, pods-list-status, pods-seccomp, pods-jail, pods-cgroup,
# pods-misbehaving, pods-vsock-flood, pods-agent-silent, pods-throttled, pods-disk-rootfs, pods-stop-delete,
# pods-vmm-killed.

export EMBER_ROOT=/run/ember-pods
POD=p1
# Rootfs of the guest-path containers: the guest's own busybox root (override to try this
# script against a host-agent pod, EMBER_POD_HOST_AGENT, on a development machine).
RFS=${PODS_ROOTFS:-/}
LOG=/tmp/pods.log

# The pod: default guest, a spare 64 MiB disk (formatted ext2 here; busybox has no mkfs.ext4).
dd if=/dev/zero of=/tmp/data.img bs=1M count=0 seek=64 2>/dev/null
# busybox mke2fs wants -F for a regular file.
mke2fs -q -F /tmp/data.img >/dev/null 2>&1 || echo "30-pods: mke2fs failed: the disk section will fail"
cat >/tmp/pod.json <<JSON
{ "mem_mib": 256, "start_timeout_secs": 240,
  "disks": [ { "id": "data", "path": "/tmp/data.img" } ],
  "hooks": { "prestart": [ { "path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/prestart.json"] } ],
             "poststop": [ { "path": "/bin/sh", "args": ["sh", "-c", "echo poststop >> /tmp/hooks.log"] } ] } }
JSON

# pod_console POD: the pod guest's console and the pod process's log, for failure output.
pod_console() {
    echo "--- console.log"; tail -n 30 "$EMBER_ROOT/@pods/$1/console.log" 2>/dev/null
    echo "--- vmm.log"; tail -n 20 "$EMBER_ROOT/@pods/$1/vmm.log" 2>/dev/null
}

# start_side_pod ID: create pod ID from /tmp/ID.json and start it (its console on failure).
start_side_pod() {
    ember pod create --config "/tmp/$1.json" "$1" || return 1
    ember pod start "$1" && return 0
    pod_console "$1"
    return 1
}

pods_start() {
    ember pod create --config /tmp/pod.json $POD || return 1
    # Created before the start: created in the guest when the pod starts.
    ember container create $POD c1 --rootfs-guest-path "$RFS" -- sleep 1000 || return 1
    ember container create $POD c2 --rootfs-guest-path "$RFS" -- sh -c 'exit 7' || return 1
    if ! ember pod start --timings $POD 2>/tmp/pod-start.err; then
        cat /tmp/pod-start.err
        pod_console $POD
        # A guest that never reached /init (no boot timer 1) hit the nested first-KVM_RUN
        # stall: ask the rig for a new host.
        grep -q init_start /tmp/pod-start.err || retry_host "pod guest never reached /init"
        return 1
    fi
    cat /tmp/pod-start.err
    ember pod status $POD
    grep -q '"status":"creating"' /tmp/prestart.json && echo "prestart hook got the state"
    ember pod status --json $POD | grep -q '"state": "running"'
}
section pods-start pods_start

pods_containers_start() {
    ember container start $POD c1 || return 1
    ember container start $POD c2 || return 1
    ember container status $POD c1
}
section pods-containers-start pods_containers_start

section pods-exec sh -c "
    out=\$(ember container exec $POD c1 -- echo hello-from-c1) || exit 1
    echo \"exec output: \$out\"
    [ \"\$out\" = hello-from-c1 ] || exit 1
    ember container exec $POD c1 -- sh -c 'exit 5'; rc=\$?
    echo \"exec exit=\$rc\"
    [ \$rc -eq 5 ]"

section pods-ps sh -c "ember container ps $POD c1 | tee /tmp/ps.txt; grep -q 'sleep 1000' /tmp/ps.txt"

pods_exit_code() {
    # c2 ended long ago: its pod process learnt it from the agent's event stream (and
    # recorded it, before any client asked).
    grep -q "container c2 exited: code 7" "$EMBER_ROOT/@pods/$POD/vmm.log" &&
        echo "c2's exit seen by its pod process"
    ember container wait $POD c2
    rc=$?
    echo "c2 exit=$rc"
    ember container status $POD c2
    [ $rc -eq 7 ] && ember container status --json $POD c2 | grep -q '"exit_code": 7'
}
section pods-exit-code pods_exit_code

pods_kill() {
    # The pod's events from here to pods-events (c3's end, the pause and the resume).
    ember pod events $POD >/tmp/events.out 2>&1 &
    EVENTS_PID=$!
    sleep 1
    # Created while the pod runs (guest path: no disk needed).
    ember container create $POD c3 --rootfs-guest-path "$RFS" -- sleep 1000 || return 1
    ember container start $POD c3 || return 1
    ember container kill $POD c3 KILL || return 1
    ember container wait $POD c3
    rc=$?
    echo "c3 exit=$rc"
    ember container status $POD c3
    [ $rc -eq 137 ]
}
section pods-kill pods_kill

pods_pause_resume() {
    ember pod pause $POD || return 1
    ember pod status --json $POD | grep -q '"state": "paused"' || return 1
    echo "paused"
    ember container status $POD c1
    ember pod resume $POD || return 1
    ember pod status --json $POD | grep -q '"state": "running"' || return 1
    echo "resumed"
    [ "$(ember container exec $POD c1 -- echo alive)" = alive ] && echo "exec after resume ok"
}
section pods-pause-resume pods_pause_resume

# What `ember pod events` told meanwhile: the agent's report of c3's end, pause, resume.
pods_events() {
    [ -n "$EVENTS_PID" ] || return 1
    sleep 1
    kill "$EVENTS_PID"
    wait "$EVENTS_PID" 2>/dev/null
    cat /tmp/events.out
    grep -q " container c3 exited: killed by signal 9 (code 137)$" /tmp/events.out &&
        grep -q " paused$" /tmp/events.out && grep -q " resumed$" /tmp/events.out
}
section pods-events pods_events

# Separate ember invocations see the pod (state lives under the root, not in a process).
section pods-list-status sh -c "
    ember pod list | tee /tmp/list.txt
    grep -q '^$POD  *running' /tmp/list.txt || exit 1
    ember pod status --json $POD > /tmp/status.json || exit 1
    grep -q '\"vmm_pid\": [0-9]' /tmp/status.json && grep -c '\"id\": \"c' /tmp/status.json"

# Each thread of the running pod's process: its name, seccomp mode (2: filtered), filter
# count (the vCPUs stack their own on the one of the thread that started them), effective
# capabilities and real uid (a vCPU's own: 0x60000000 + the pod process's pid).
pods_seccomp() {
    pid=$(ember pod status --json $POD | sed -n 's/.*"vmm_pid": \([0-9]*\).*/\1/p')
    [ -n "$pid" ] || return 1
    for t in /proc/$pid/task/*; do
        mode=$(sed -n 's/^Seccomp:[[:space:]]*//p' "$t/status")
        filters=$(sed -n 's/^Seccomp_filters:[[:space:]]*//p' "$t/status")
        caps=$(sed -n 's/^CapEff:[[:space:]]*//p' "$t/status")
        uid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "$t/status")
        echo "thread $(cat "$t/comm") seccomp=$mode filters=$filters caps=$caps uid=$uid"
    done
    echo "vcpu user: $((1610612736 + pid))"
}
section pods-seccomp pods_seccomp

# What the pod process's threads see of the host's files: the vCPU and event-loop threads
# their jail (the pod directory, kernel, initrd, disk, /dev/kvm, /proc/self/fd), the main
# thread the host.
pods_jail() {
    pid=$(ember pod status --json $POD | sed -n 's/.*"vmm_pid": \([0-9]*\).*/\1/p')
    [ -n "$pid" ] || return 1
    for t in /proc/$pid/task/*; do
        name=$(cat "$t/comm")
        case "$name" in vcpu0|event-loop|ember) ;; *) continue ;; esac
        echo "thread $name root: $(ls "$t/root/" | tr '\n' ' ')"
        [ -e "$t/root/etc/passwd" ] && echo "thread $name sees /etc/passwd" ||
            echo "thread $name cannot see /etc/passwd"
        [ -e "$t/root/var/lib/ember/guest/vmlinux" ] && echo "thread $name sees the kernel"
        [ -e "$t/root$EMBER_ROOT/@pods/$POD/state.json" ] && echo "thread $name sees the pod directory"
    done
}
section pods-jail pods_jail

# The pod process's own cgroup on the host, with limits sized from its VM (256 MiB, 1 vCPU).
pods_cgroup() {
    pid=$(ember pod status --json $POD | sed -n 's/.*"vmm_pid": \([0-9]*\).*/\1/p')
    [ -n "$pid" ] || return 1
    cg=$(sed -n 's/^0:://p' /proc/$pid/cgroup)
    echo "pod process cgroup: $cg"
    for f in memory.max pids.max cpu.max; do
        echo "$f: $(cat /sys/fs/cgroup$cg/$f 2>/dev/null || echo none)"
    done
    echo "threads in it: $(wc -l </sys/fs/cgroup$cg/cgroup.threads)"
}
section pods-cgroup pods_cgroup

# A second pod whose container floods the guest's serial console from a busy loop: its
# console.log stops at the pod's limit (64 KiB here) with one marker and one warning, and p1's
# exec keeps answering meanwhile.
pods_misbehaving() {
    echo '{ "console_limit_kib": 64, "start_timeout_secs": 240 }' >/tmp/p3.json
    start_side_pod p3 || return 1
    cat >/tmp/flood.json <<JSON
{ "rootfs": { "guest_path": { "path": "$RFS" } },
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin"],
               "args": ["sh", "-c", "while :; do echo flood-flood-flood-flood-flood-flood-flood >/dev/ttyS0; done"] },
  "mounts": [ { "destination": "/dev/ttyS0", "source": "/dev/ttyS0", "options": ["bind"] } ] }
JSON
    ember container create --config /tmp/flood.json p3 flood || return 1
    ember container start p3 flood || return 1
    con=$EMBER_ROOT/@pods/p3/console.log
    n=0
    while ! grep -q "console output beyond" "$con" && [ "$n" -lt 240 ]; do
        [ $((n % 20)) -eq 0 ] && echo "p1 exec while p3 floods: $(ember container exec $POD c1 -- echo alive-$n)"
        sleep 1
        n=$((n + 1))
    done
    echo "p1 exec after p3 filled its console: $(ember container exec $POD c1 -- echo alive-after)"
    echo "p3 console bytes: $(wc -c <"$con")"
    echo "p3 console markers: $(grep -c 'console output beyond 65536 bytes dropped' "$con")"
    grep -q "console reached its limit of 65536 bytes" "$EMBER_ROOT/@pods/p3/vmm.log" &&
        echo "p3 vmm.log has the warning"
    ember container status p3 flood
    ember pod stop p3 && ember pod delete p3 && echo "p3 stopped and deleted"
}
section pods-misbehaving pods_misbehaving

# A pod whose container opens vsock connections as fast as it can, to a host listener that
# never accepts (its backlog of 8 fills: the rest are refused at once, the device loop never
# waits on it) and to one that accepts and never reads (the guest stops at its own limit of
# 512 connections; eight of them are written to until their credit runs out). Meanwhile the
# pod's own exec (a host connection: host slots are the guest's to take no more) and p1's
# exec answer, and the pod process's descriptors stay bounded; after the container is
# killed its connections are gone.
pods_vsock_flood() {
    kit=/tmp/flood-kit
    rm -rf $kit && mkdir -p $kit || return 1
    (cd $kit && cpio -id usr/local/bin/io-bench </var/lib/ember/guest/initramfs.cpio 2>/dev/null)
    [ -x $kit/usr/local/bin/io-bench ] || { echo "the guest image has no io-bench"; return 1; }
    echo '{ "start_timeout_secs": 240 }' >/tmp/p5.json
    start_side_pod p5 || return 1
    uds=$EMBER_ROOT/@pods/p5/vsock.sock
    $kit/usr/local/bin/io-bench unix-hold-serve --path ${uds}_5004 --backlog 8 --no-accept >/tmp/hold-5004.log 2>&1 &
    busy=$!
    $kit/usr/local/bin/io-bench unix-hold-serve --path ${uds}_5003 >/tmp/hold-5003.log 2>&1 &
    held=$!
    sleep 1
    cat >/tmp/vflood.json <<JSON
{ "rootfs": { "guest_path": { "path": "$RFS" } },
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin:/usr/local/bin"],
               "rlimits": [ { "type": "RLIMIT_NOFILE", "soft": 4096, "hard": 4096 } ],
               "args": ["sh", "-c", "io-bench vsock-flood --port 5004 --conns 200 >/tmp/busy.out 2>&1 & until grep -q opened /tmp/busy.out; do sleep 1; done; io-bench vsock-flood --port 5003 --conns 1200 --write >/tmp/held.out 2>&1 & wait"] } }
JSON
    ember container create --config /tmp/vflood.json p5 vflood || return 1
    ember container start p5 vflood || return 1
    pid=$(ember pod status --json p5 | sed -n 's/.*"vmm_pid": \([0-9]*\).*/\1/p')
    n=0
    while ! ember container exec p5 vflood -- cat /tmp/held.out 2>/dev/null | grep -q opened && [ "$n" -lt 240 ]; do
        [ $((n % 20)) -eq 0 ] && echo "p1 exec while p5 floods its vsock: $(ember container exec $POD c1 -- echo alive-$n)"
        sleep 2
        n=$((n + 2))
    done
    echo "p5 busy listener: $(ember container exec p5 vflood -- cat /tmp/busy.out)"
    echo "p5 holding listener: $(ember container exec p5 vflood -- cat /tmp/held.out)"
    echo "p5 exec while its guest holds its connections: $(ember container exec p5 vflood -- echo own-alive)"
    echo "p1 exec while p5 holds its connections: $(ember container exec $POD c1 -- echo alive-held)"
    echo "p5 pod process descriptors while flooded: $(ls /proc/$pid/fd | wc -l)"
    ember pod stats p5 | grep vsock | sed 's/^/p5 stats while flooded: /'
    ember container kill p5 vflood KILL
    ember container wait p5 vflood
    n=0
    while ! ember pod stats p5 | grep -q ' guest_connections=0 ' && [ "$n" -lt 60 ]; do
        sleep 1
        n=$((n + 1))
    done
    ember pod stats p5 | grep vsock | sed 's/^/p5 stats after the kill: /'
    echo "p5 pod process descriptors after the kill: $(ls /proc/$pid/fd | wc -l)"
    kill $busy $held 2>/dev/null
    ember pod stop p5 && ember pod delete p5 && echo "p5 stopped and deleted"
}
section pods-vsock-flood pods_vsock_flood

# A guest whose agent never answers again: a real-time busy loop on its one vCPU starves every
# other process in it. The pod process's health check stops the VM after agent_timeout_secs
# and records why; the host and p1 carry on.
pods_agent_silent() {
    # Its poststop hook runs when the pod process records the stop: through the hook runner
    # (the main thread that records it is under its seccomp filter, without execve).
    rm -f /tmp/p6-poststop.json
    cat >/tmp/p6.json <<'JSON'
{ "vcpus": 1, "agent_timeout_secs": 30, "start_timeout_secs": 240,
  "hooks": { "poststop": [ { "path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/p6-poststop.json"] } ] } }
JSON
    start_side_pod p6 || return 1
    cat >/tmp/hog.json <<JSON
{ "rootfs": { "guest_path": { "path": "$RFS" } },
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin:/usr/local/bin"],
               "args": ["sh", "-c", "sleep 1; io-bench rt-hog"] } }
JSON
    ember container create --config /tmp/hog.json p6 hog || return 1
    ember container start p6 hog || return 1
    echo "p6 exec before the hog spins: $(ember container exec p6 hog -- echo own-alive)"
    t0=$(date +%s)
    n=0
    while ! ember pod status --json p6 | grep -q '"state": "stopped"' && [ "$n" -lt 300 ]; do
        [ $((n % 20)) -eq 0 ] && echo "p1 exec while p6's agent is silent: $(ember container exec $POD c1 -- echo alive-$n)"
        sleep 2
        n=$((n + 2))
    done
    echo "p6 stopped after $(($(date +%s) - t0)) s: $(ember pod status --json p6 | sed -n 's/.*"stop_reason": "\(.*\)".*/\1/p')"
    grep -q "the guest agent did not answer its health check" "$EMBER_ROOT/@pods/p6/vmm.log" &&
        echo "p6 vmm.log has the warning"
    echo "p6 poststop hook got: $(cat /tmp/p6-poststop.json 2>&1)"
    echo "p1 exec after p6 was stopped: $(ember container exec $POD c1 -- echo alive-after)"
    ember container status p6 hog
    ember pod delete p6 && echo "p6 deleted"
}
section pods-agent-silent pods_agent_silent

# uptime_cs: the host's uptime in centiseconds (/proc/uptime has two decimals).
uptime_cs() {
    _t=$(cut -d' ' -f1 /proc/uptime)
    echo "${_t%.*}${_t#*.}"
}

# A pod whose first disk is rate limited to 1 MiB/s (its pod config's rate_limit) and whose
# second is not: a container reads 8 MiB of each, raw; the limited read waits for tokens (at
# least 7 s: the first MiB is the full bucket's), the other does not, and p1's exec answers
# while the limited read runs; then the container floods the unlimited disk with writes, and
# then its virtio-fs share.
# flood_execs WHAT OUT: while p4's flood of its WHAT (the background job just started, its
# report going to OUT) runs, p1's exec and p4's own answer, twice each; then the flood's end.
flood_execs() {
    _job=$!
    sleep 3
    for i in 1 2; do
        echo "p1 exec while p4 floods its $1: $(ember container exec $POD c1 -- echo alive-$i)"
        echo "p4 exec while it floods its $1: $(ember container exec p4 reader -- echo own-alive-$i)"
    done
    wait $_job
    _rc=$?
    echo "p4 $1 flood: exit $_rc, $(cat "$2")"
    # Why, when p4 did not come through it (rig/RELIABILITY.md: pods-throttled).
    if [ $_rc != 0 ]; then
        echo "p4 after its $1 flood: $(ember pod status --json p4 | grep -E '"(state|stop_reason)"' | tr -s ' \n' ' ')"
        pod_console p4
        echo "--- the host's kernel"; dmesg | tail -n 15
    fi
}

pods_throttled() {
    for d in slow fast; do dd if=/dev/zero of=/tmp/$d.img bs=1M count=0 seek=16 2>/dev/null; done
    cat >/tmp/p4.json <<JSON
{ "start_timeout_secs": 240,
  "disks": [ { "id": "slow", "path": "/tmp/slow.img",
               "rate_limit": { "bandwidth": { "size": 1048576, "refill_time_ms": 1000 } } },
             { "id": "fast", "path": "/tmp/fast.img" } ] }
JSON
    start_side_pod p4 || return 1
    cat >/tmp/reader.json <<JSON
{ "rootfs": { "guest_path": { "path": "$RFS" } },
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin"], "args": ["sleep", "1000"] },
  "mounts": [ { "destination": "/dev/vda", "source": "/dev/vda", "options": ["bind"] },
              { "destination": "/dev/vdb", "source": "/dev/vdb", "options": ["bind"] } ],
  "host_mounts": [ { "source": "/tmp/fsflood", "destination": "/flood" } ] }
JSON
    rm -rf /tmp/fsflood && mkdir -p /tmp/fsflood
    ember container create --config /tmp/reader.json p4 reader || return 1
    ember container start p4 reader || return 1
    for d in vdb vda; do
        t0=$(uptime_cs)
        # The bytes read, counted in the container (dd's own report goes to stderr).
        ember container exec p4 reader -- sh -c "dd if=/dev/$d bs=64k count=128 2>/dev/null | wc -c" \
            >/tmp/read-$d.out 2>&1 &
        job=$!
        [ $d = vda ] && echo "p1 exec while p4 reads its limited disk: $(ember container exec $POD c1 -- echo alive)"
        wait $job
        rc=$?
        t1=$(uptime_cs)
        echo "read of /dev/$d: exit $rc, $(((t1 - t0) / 100)).$(((t1 - t0) % 100 / 10)) s, $(tr -d ' ' </tmp/read-$d.out) bytes"
    done
    # Then p4 floods its unlimited disk with synced writes for 20 s (bounded only by its pod's
    # cgroup): p1's exec answers meanwhile, and so does p4's own.
    ember container exec p4 reader -- sh -c 'end=$(($(cut -d. -f1 /proc/uptime) + 20)); n=0
        while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
            dd if=/dev/zero of=/dev/vdb bs=64k count=256 2>/dev/null && sync || exit 1; n=$((n + 16))
        done; echo "$n MiB written"' >/tmp/bflood.out 2>&1 &
    flood_execs disk /tmp/bflood.out
    # And its virtio-fs share (a host directory): 1 MiB files rewritten and small files made
    # and removed as fast as it can for 20 s.
    ember container exec p4 reader -- sh -c 'end=$(($(cut -d. -f1 /proc/uptime) + 20)); n=0; f=0
        while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do
            dd if=/dev/zero of=/flood/big$((n % 4)) bs=64k count=16 2>/dev/null || exit 1
            for i in 1 2 3 4 5 6 7 8 9 10; do echo $i >/flood/small$i || exit 1; done
            rm -f /flood/small* || exit 1; n=$((n + 1)); f=$((f + 10))
        done; echo "$n MiB written, $f small files made and removed"' >/tmp/fsflood.out 2>&1 &
    flood_execs share /tmp/fsflood.out
    echo "p4 share on the host after the flood: $(ls /tmp/fsflood | tr '\n' ' ')"
    # The record of why: the devices' counters (the first disk's requests waited).
    ember pod stats p4 | sed 's/^/stats: /'
    ember pod stop p4 && ember pod delete p4 && echo "p4 stopped and deleted"
}
section pods-throttled pods_throttled

pods_disk_rootfs() {
    # A filler container mounts the pod's disk and copies busybox onto it...
    cat >/tmp/filler.json <<JSON
{ "rootfs": { "guest_path": { "path": "$RFS" } },
  "process": { "env": ["PATH=/bin:/sbin:/usr/bin"], "args": ["sh", "-c", "mkdir -p /mnt/data/bin /mnt/data/proc /mnt/data/dev /mnt/data/sys /mnt/data/tmp && cp /bin/busybox /mnt/data/bin/ && ln -sf busybox /mnt/data/bin/sh && ln -sf busybox /mnt/data/bin/cat && ln -sf busybox /mnt/data/bin/sleep && echo disk-rootfs-ok > /mnt/data/marker && sync"] },
  "mounts": [ { "destination": "/mnt/data", "source": "/dev/vda", "fstype": "ext2" } ] }
JSON
    ember container create --config /tmp/filler.json $POD filler || return 1
    ember container start $POD filler || return 1
    ember container wait $POD filler || { echo "filler failed"; return 1; }
    # ...and a second container runs on that disk as its rootfs.
    cat >/tmp/ondisk.json <<JSON
{ "rootfs": { "disk": { "id": "data" } }, "fstype": "ext2",
  "process": { "args": ["sleep", "1000"], "env": ["PATH=/bin"] } }
JSON
    ember container create --config /tmp/ondisk.json $POD ondisk || return 1
    ember container start $POD ondisk || return 1
    out=$(ember container exec $POD ondisk -- cat /marker)
    echo "marker: $out"
    [ "$out" = disk-rootfs-ok ] && return 0
    ember pod status --json $POD
    pod_console $POD
    return 1
}
section pods-disk-rootfs pods_disk_rootfs

pods_stop_delete() {
    ember container stop $POD c1 || { ember pod status --json $POD; pod_console $POD; return 1; }
    ember container delete $POD c1 || return 1
    ember pod stop $POD || return 1
    ember pod status $POD
    ember pod delete $POD || return 1
    [ ! -e "$EMBER_ROOT/@pods/$POD" ] && echo "pod directory removed"
    [ ! -e "/sys/fs/cgroup/ember/$POD" ] && echo "pod cgroup removed"
    grep -q poststop /tmp/hooks.log && echo "poststop hook ran"
}
section pods-stop-delete pods_stop_delete

pods_vmm_killed() {
    ember pod create p2 || return 1
    if ! ember pod start p2; then pod_console p2; return 1; fi
    pid=$(ember pod status --json p2 | sed -n 's/.*"vmm_pid": \([0-9]*\).*/\1/p')
    echo "pod process pid=$pid"
    [ -n "$pid" ] || return 1
    kill -9 "$pid"
    sleep 1
    ember pod status p2 | tee /tmp/p2.txt
    grep -q 'stopped' /tmp/p2.txt || return 1
    ember pod list
    ember pod delete p2
}
section pods-vmm-killed pods_vmm_killed
