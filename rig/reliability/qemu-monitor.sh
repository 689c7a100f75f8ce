# Scenario: boot the guest N times with QEMU (-accel kvm) as the microVM monitor inside the
# virtual host, to measure how often a guest never gets going. Needs the QEMU bundle
# (qemu-bundle.sh) at / and /rig/test-guest.cpio. N: $RIG_RUNS (default 5).
runs=${RIG_RUNS:-5}
limit=${RIG_GUEST_LIMIT:-120}
i=1
while [ "$i" -le "$runs" ]; do
    log=/tmp/guest-$i.log
    t0=$(cut -d' ' -f1 /proc/uptime)
    qemu-system-x86_64 -L /usr/share/qemu -accel kvm -M microvm -cpu host,-arch-capabilities \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot -m 128 -smp 1 \
        -kernel /var/lib/ember/guest/vmlinux -initrd /rig/test-guest.cpio \
        -append "console=ttyS0 earlyprintk=ttyS0 reboot=t panic=1 8250.nr_uarts=1 ${RIG_GUEST_CMDLINE:-}" \
        >"$log" 2>&1 &
    pid=$!
    echo "=== BEGIN qemu-run-$i"
    n=0
    rc=1
    while [ "$n" -lt $((limit * 5)) ] && kill -0 "$pid" 2>/dev/null; do
        if grep -q "ember-agent: ready" "$log" 2>/dev/null; then rc=0; break; fi
        sleep 0.2
        n=$((n + 1))
    done
    if [ "$rc" -ne 0 ]; then
        rc=1
        echo "no readiness (limit ${limit}s); guest console bytes: $(wc -c <"$log" 2>/dev/null)"
        tail -5 "$log"

    fi
    t1=$(cut -d' ' -f1 /proc/uptime)
    echo "host uptime $t0 -> $t1; first guest line: $(head -1 "$log" | cut -c1-80)"
    grep "ember-agent: ready" "$log"
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "=== END qemu-run-$i rc=$rc"
    i=$((i + 1))
done
