# 10-boot: inside the virtual KVM host, `ember vm run` boots the default guest
# (/var/lib/ember/guest) and the agent reports ready. Sourced by the host's /init after
# /rig/lib.sh. Sections: kvm-real, boot, no-pvm-refusal, snapshot (the guest saved once its
# agent is ready), restore (that snapshot started twice, each VM with its own vsock socket,
# until its agent answers), restore-bad (a corrupted snapshot: one error, exit 1),
# seccomp-forbidden (a vCPU filter without ioctl: the first KVM_RUN ends the VMM with a line
# naming the thread and the syscall).

section kvm-real sh -c '
    ls -l /dev/kvm || exit 1
    if [ -e /sys/module/kvm_pvm ]; then echo "kvm_pvm present"; exit 1; fi
    grep -o -m1 -w svm /proc/cpuinfo || { echo "no svm flag"; exit 1; }
    for m in kvm_amd kvm_intel; do [ -d /sys/module/$m ] && echo "module $m loaded"; done
    exit 0'

# boot_once LOG: runs `ember vm run --timings` (plus --exit-on-ready when ember offers it);
# prints ember's exit status as "ember exit=N". rc 0 when the agent got ready and ember exited 0
# (or, without --exit-on-ready, was stopped by us after readiness); rc 2 when the guest printed
# nothing at all (the nested first-KVM_RUN hang), rc 1 otherwise.
boot_once() {
    _log=$1
    _flags="--timings"
    if ember vm run --help 2>&1 | grep -q -- '--exit-on-ready'; then
        _flags="$_flags --exit-on-ready"
    fi
    : >"$_log"
    ember vm run $_flags >"$_log" 2>&1 &
    _pid=$!
    _rc=1
    if wait_for_line "$_log" "ember-agent: ready" "${RIG_BOOT_LIMIT:-180}" "$_pid"; then
        _rc=0
        # With --exit-on-ready ember stops the VM itself; give it a moment, else stop it.
        _n=0
        while kill -0 "$_pid" 2>/dev/null && [ "$_n" -lt 50 ]; do sleep 0.2; _n=$((_n + 1)); done
        if kill -0 "$_pid" 2>/dev/null; then
            echo "(ember still running after readiness: stopping it)"
            kill "$_pid"
            wait "$_pid"
            echo "ember exit=0 (stopped by the scenario after readiness)"
            return 0
        fi
    elif [ ! -s "$_log" ]; then
        _rc=2
    fi
    kill "$_pid" 2>/dev/null
    wait "$_pid"
    _status=$?
    echo "ember exit=$_status"
    [ "$_status" -eq 0 ] || [ "$_rc" -eq 2 ] || _rc=1
    return "$_rc"
}

boot_with_retries() {
    _try=1
    while :; do
        boot_once /tmp/boot.log
        _r=$?
        cat /tmp/boot.log
        echo "boot attempt $_try rc=$_r"
        [ "$_r" -ne 2 ] && return "$_r"
        [ "$_try" -ge "${RIG_BOOT_TRIES:-3}" ] && return 1
        echo "guest printed nothing: retrying"
        _try=$((_try + 1))
    done
}

section boot boot_with_retries

section no-pvm-refusal sh -c '
    if grep -q "kvm_pvm" /tmp/boot.log; then
        echo "ember refused KVM inside the virtual host:"; grep "kvm_pvm" /tmp/boot.log; exit 1
    fi
    echo "no refusal"'

section snapshot sh -c '
    rm -rf /tmp/snap /tmp/snap-boot.vsock
    ember vm run --timings --snapshot-on-ready /tmp/snap --vsock /tmp/snap-boot.vsock \
        --timeout-s 300 --console-file /tmp/snap-console.log
    rc=$?
    ls -ls /tmp/snap
    du -k /tmp/snap/memory | sed "s/^/memory file data KiB: /"
    echo "snapshot exit=$rc"
    exit $rc'

section restore sh -c '
    for i in 1 2; do
        rm -f /tmp/restore$i.vsock
        ember vm restore /tmp/snap --vsock /tmp/restore$i.vsock --exit-on-agent --timings \
            --timeout-s 120 --console-file /tmp/restore$i.log
        rc=$?
        echo "restore $i exit=$rc"
        [ "$rc" -eq 0 ] || exit 1
    done'

section restore-bad sh -c '
    rm -rf /tmp/snap-bad && cp -r /tmp/snap /tmp/snap-bad || exit 1
    printf X | dd of=/tmp/snap-bad/state bs=1 seek=100 conv=notrunc 2>/dev/null
    ember vm restore /tmp/snap-bad --console-file /tmp/restore-bad.log >/tmp/restore-bad.out 2>&1
    rc=$?
    cat /tmp/restore-bad.out
    echo "corrupt exit=$rc lines=$(wc -l </tmp/restore-bad.out)"
    rm -rf /tmp/snap-bad'

section seccomp-forbidden sh -c '
    ember vm seccomp >/tmp/filters.json || exit 1
    echo "syscalls listed: $(grep -c "\"syscall\"" /tmp/filters.json)"
    # One syscall per line: the vCPU filter without ioctl.
    sed "/\"vcpu\"/,/]/{/\"syscall\": \"ioctl\"/d}" /tmp/filters.json >/tmp/no-ioctl.json
    echo "vcpu filter lines removed: $(( $(wc -l </tmp/filters.json) - $(wc -l </tmp/no-ioctl.json) ))"
    ember vm run --seccomp-filter /tmp/no-ioctl.json --timeout-s 120 \
        --console-file /tmp/seccomp-console.log >/tmp/seccomp.out 2>&1
    rc=$?
    cat /tmp/seccomp.out
    echo "forbidden exit=$rc"
    [ "$rc" -eq 159 ]'
