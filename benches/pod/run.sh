#!/bin/sh
# Pod start-up benchmark: inside the virtual KVM host (ember-rig run), N times: `ember pod run`
# (a detached pod process boots the default guest and waits for the agent's announcement),
# then `ember container create` + `ember container start` of a busybox container (the guest's
# own root). Reports, per phase, min / median / max in ms over the runs that succeeded:
#   pod_run            `ember pod run` wall time (create + start, CLI to CLI)
#     rootfs_images ... total   the start's own phases (`ember pod run --timings`), including
#     vm_*                      the VMM's boot phases (since the pod process started)
#   container_create   `ember container create` wall time (state + agent CreateContainer)
#   container_start    `ember container start` wall time (agent StartContainer: process runs)
#   to_first_process   pod_run + container_create + container_start
#
# Usage: benches/pod/run.sh [N]            (N defaults to 5)
# Env:   EMBER_RIG   path to ember-rig (default: on PATH, else target/*/ember-rig)
#        OUT         directory for the scenario, raw log and table (default: a new temp dir)
#        HOST_AGENT  path to ember-agent: run the same scenario HERE, without a VM, the pod's
#                    machine being the agent as a host process (EMBER_POD_HOST_AGENT; needs
#                    root, /bin/busybox, `ember` on PATH): measures the runtime's own cost.
# Needs what `ember-rig run` needs: /var/lib/ember/host/vmlinux, the static /usr/local/bin/ember,
# /var/lib/ember/guest/{vmlinux,initramfs.cpio}, qemu-system-x86_64 (scripts/setup.sh).
set -eu

N=${1:-5}
OUT=${OUT:-$(mktemp -d /tmp/ember-pod-bench.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

HOST_AGENT=${HOST_AGENT:-}
rig=${EMBER_RIG:-$(command -v ember-rig 2>/dev/null || true)}
if [ -z "$rig" ]; then
    rig=$(ls -t "$root"/target/*/release/ember-rig "$root"/target/*/debug/ember-rig \
        "$root"/target/release/ember-rig "$root"/target/debug/ember-rig 2>/dev/null | head -n1 || true)
fi
if [ -z "$HOST_AGENT" ] && { [ -z "$rig" ] || [ ! -x "$rig" ]; }; then
    echo "run.sh: ember-rig not found (cargo build -p ember-rig, or set EMBER_RIG)" >&2
    exit 1
fi

mkdir -p "$OUT"
rootfs=/
if [ -n "$HOST_AGENT" ]; then
    # A busybox root for the containers (in the guest they use the guest's own root).
    rootfs="$OUT/rootfs"
    mkdir -p "$rootfs/bin" "$rootfs/proc" "$rootfs/dev" "$rootfs/sys" "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for a in sh sleep; do ln -sf busybox "$rootfs/bin/$a"; done
fi
scenario="$OUT/pod-bench.sh"
log="$OUT/console.log"
cat >"$scenario" <<SCENARIO
# pod-bench: $N pod runs, each in its own section podrun-<i>.
export EMBER_ROOT=/run/ember-bench
# ms since boot: date +%s%N where busybox has it, else /proc/uptime (10 ms steps).
now_ms() {
    _n=\$(date +%s%N 2>/dev/null)
    case "\$_n" in
        *N*|'') awk '{ printf "%d", \$1 * 1000 }' /proc/uptime ;;
        *) echo \$((_n / 1000000)) ;;
    esac
}
echo '{ "mem_mib": 256, "start_timeout_secs": 240 }' > /tmp/bench-pod.json
one_run() {
    t0=\$(now_ms)
    ember pod run --config /tmp/bench-pod.json --timings bp 2>/tmp/bench-t.txt >/dev/null ||
        { cat /tmp/bench-t.txt; tail -n 20 \$EMBER_ROOT/@pods/bp/console.log 2>/dev/null; return 1; }
    t1=\$(now_ms)
    ember container create bp c --rootfs-guest-path $rootfs -- sleep 1000 >/dev/null || return 1
    t2=\$(now_ms)
    ember container start bp c >/dev/null || return 1
    t3=\$(now_ms)
    # The start's own phases: "name ms" lines of the --timings table.
    awk 'NR > 1 && NF == 2 { print "PHASE " \$1 " " \$2 }' /tmp/bench-t.txt
    echo "PHASE pod_run \$((t1 - t0))"
    echo "PHASE container_create \$((t2 - t1))"
    echo "PHASE container_start \$((t3 - t2))"
    echo "PHASE to_first_process \$((t3 - t0))"
    ember pod stop bp >/dev/null
    ember pod delete bp
}
i=1
while [ "\$i" -le $N ]; do
    section podrun-\$i one_run
    ember pod delete --force bp >/dev/null 2>&1
    i=\$((i + 1))
done
SCENARIO

if [ -n "$HOST_AGENT" ]; then
    echo "run.sh: $N pod runs here with the host agent $HOST_AGENT (log: $log)" >&2
    EMBER_POD_HOST_AGENT=$HOST_AGENT sh -c ". '$root/rig/host/lib.sh'; . '$scenario'" >"$log" 2>&1 || true
else
    echo "run.sh: $N pod runs in the virtual KVM host (log: $log)" >&2
    "$rig" run --scenario "$scenario" --log "$log" --quiet --timeout $((120 + N * 200)) || true
fi

# Keep the PHASE lines of sections that ended rc=0, then min/median/max per phase.
awk '
/^=== BEGIN podrun-/ { n = 0; next }
/^=== END podrun-/ {
    split($0, a, "rc="); if (a[2] + 0 == 0) { ok++; for (k = 1; k <= n; k++) print buf[k] } else bad++
    next
}
/^PHASE / { buf[++n] = $2 "\t" $3 }
END { printf "runs ok=%d failed=%d\n", ok, bad > "/dev/stderr" }
' "$log" >"$OUT/phases.tsv"

{
    printf "%-24s %6s %10s %10s %10s\n" phase runs min_ms median_ms max_ms
    cut -f1 "$OUT/phases.tsv" | awk '!seen[$0]++' | while read -r phase; do
        awk -F'\t' -v p="$phase" '$1 == p { print $2 }' "$OUT/phases.tsv" | sort -n | awk -v p="$phase" '
            { v[NR] = $1 }
            END { if (NR) printf "%-24s %6d %10.1f %10.1f %10.1f\n", p, NR, v[1], v[int((NR + 1) / 2)], v[NR] }'
    done
} | tee "$OUT/table.txt"
echo "run.sh: raw log $log, table $OUT/table.txt" >&2
