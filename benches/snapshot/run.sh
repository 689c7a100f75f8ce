#!/bin/sh
# Snapshot benchmark, in one virtual KVM host boot (ember-rig run): the default guest is
# booted once and snapshotted at agent ready; then N cold boots (`ember vm run
# --exit-on-ready`, agent ready on the boot timer), N restores of that snapshot (`ember vm
# restore --exit-on-agent`, the agent's answer to a ping over vsock) and N cold boots that
# copy kernel and initrd instead of mapping them (`--copy-boot-files`) alternate. Prints the
# medians and their ratio, the phases of a restore, the snapshot's file sizes, and the memory
# of 10 VMs restored from the snapshot against 10 cold-booted ones (RSS and PSS summed over
# their processes: PSS counts the template pages they share once).
#
# Usage: benches/snapshot/run.sh [N]      (N defaults to 5)
# Env:   EMBER_RIG, OUT as for benches/boot/run.sh; MEM_VMS (default 10).
set -eu

N=${1:-5}
MEM_VMS=${MEM_VMS:-10}
OUT=${OUT:-$(mktemp -d /tmp/ember-snapshot-bench.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
rig=${EMBER_RIG:-$(command -v ember-rig 2>/dev/null || true)}
if [ -z "$rig" ]; then
    rig=$(ls -t "$root"/target/release/ember-rig "$root"/target/debug/ember-rig 2>/dev/null | head -n1 || true)
fi
[ -n "$rig" ] && [ -x "$rig" ] || { echo "run.sh: ember-rig not found (cargo build --release -p ember-rig)" >&2; exit 1; }
mkdir -p "$OUT"
scenario="$OUT/snapshot-bench.sh"
log="$OUT/console.log"
cat >"$scenario" <<SCENARIO
section snap-make sh -c 'ember vm run --snapshot-on-ready /tmp/snap --vsock /tmp/snap.vsock \
    --console-file /tmp/snap.log --timeout-s 300 && ls -ls /tmp/snap && du -k /tmp/snap/memory'
i=1
while [ "\$i" -le $N ]; do
    section cold-\$i sh -c 'rm -f /tmp/c.vsock; ember vm run --timings --exit-on-ready \
        --vsock /tmp/c.vsock --console-file /tmp/c.log --timeout-s 120'
    section restore-\$i sh -c 'rm -f /tmp/r.vsock; ember vm restore /tmp/snap --timings \
        --exit-on-agent --vsock /tmp/r.vsock --console-file /tmp/r.log --timeout-s 120'
    section copy-\$i sh -c 'rm -f /tmp/c.vsock; ember vm run --timings --exit-on-ready \
        --copy-boot-files --vsock /tmp/c.vsock --console-file /tmp/c.log --timeout-s 120'
    i=\$((i + 1))
done

# mem_of KIND: start $MEM_VMS VMs of KIND (cold|restore), wait until each agent is up, sum
# Rss and Pss over their processes, stop them.
mem_of() {
    pids=""
    j=1
    while [ "\$j" -le $MEM_VMS ]; do
        rm -f /tmp/m\$j.vsock /tmp/m\$j.log
        if [ "\$1" = cold ]; then
            ember vm run --vsock /tmp/m\$j.vsock --console-file /tmp/m\$j.log >/dev/null 2>&1 &
        else
            ember vm restore /tmp/snap --vsock /tmp/m\$j.vsock --console-file /tmp/m\$j.log >/dev/null 2>&1 &
        fi
        pids="\$pids \$!"
        j=\$((j + 1))
    done
    if [ "\$1" = cold ]; then
        j=1
        while [ "\$j" -le $MEM_VMS ]; do
            wait_for_line /tmp/m\$j.log "ember-agent: ready" 300 || echo "VM \$j not ready"
            j=\$((j + 1))
        done
    else
        # Restored guests are up within a second; give their first writes time to land.
        sleep 5
    fi
    for p in \$pids; do cat /proc/\$p/smaps_rollup; done | awk -v k="\$1" '
        /^Rss:/ { r += \$2 } /^Pss:/ { p += \$2 }
        END { printf "memory %s vms=$MEM_VMS rss_kib=%d pss_kib=%d\n", k, r, p }'
    for p in \$pids; do kill \$p; done
    for p in \$pids; do wait \$p 2>/dev/null; done
    return 0
}
section mem-cold mem_of cold
section mem-restore mem_of restore
SCENARIO

echo "run.sh: $N cold boots and $N restores alternating in one virtual KVM host (log: $log)" >&2
"$rig" run --scenario "$scenario" --log "$log" --quiet --timeout $((600 + N * 300)) || true

# "since start" column of --timings tables (name in columns 1-44, ms in 46-54).
awk '
/^=== BEGIN (cold|copy|restore)-/ { split($3, a, "-"); kind = a[1]; inb = 1; delete v; next }
/^=== END (cold|copy|restore)-/ {
    split($0, b, "rc="); if (b[2] + 0 == 0) { for (k in v) print kind "\t" k "\t" v[k] } else { print kind "\tFAILED\t0" }
    inb = 0; next
}
inb && / ms/ && length($0) > 50 {
    name = substr($0, 1, 44); sub(/ +$/, "", name)
    val = substr($0, 46, 9); gsub(/ /, "", val)
    if (val != "-" && name != "phase") v[name] = val
}' "$log" >"$OUT/samples.tsv"

median() {
    awk -F'\t' -v k="$1" -v p="$2" '$1 == k && $2 == p { print $3 }' "$OUT/samples.tsv" | sort -g >"$OUT/one.txt"
    cnt=$(wc -l <"$OUT/one.txt")
    if [ "$cnt" -eq 0 ]; then echo "-"; else sed -n "$(((cnt + 1) / 2))p" "$OUT/one.txt"; fi
}
cold=$(median cold "agent ready (boot timer 123)")
rest=$(median restore "agent answered (ping over vsock)")
{
    nc=$(awk -F'\t' '$1 == "cold" && $2 == "agent ready (boot timer 123)"' "$OUT/samples.tsv" | wc -l)
    nr=$(awk -F'\t' '$1 == "restore" && $2 == "agent answered (ping over vsock)"' "$OUT/samples.tsv" | wc -l)
    nf=$(grep -c FAILED "$OUT/samples.tsv" || true)
    echo "Runs: $nc of $N cold boots and $nr of $N restores reached their agent ($nf failed)."
    echo
    echo "| start | median ms to the agent |"
    echo "|---|---:|"
    echo "| cold boot (\`ember vm run\`, boot timer 123) | $cold |"
    echo "| restore (\`ember vm restore\`, ping answered) | $rest |"
    awk -v c="$cold" -v r="$rest" 'BEGIN { if (c > 0 && r > 0) printf "| ratio restore / cold | %.3f |\n", r / c }'
    echo
    echo "| restore phase (ms since \`ember vm restore\` started) | median |"
    echo "|---|---:|"
    for ph in "process start (before vm run)" "snapshot memory mapped" "devices + vCPUs restored" \
        "first KVM_RUN" "agent answered (ping over vsock)"; do
        echo "| $ph | $(median restore "$ph") |"
    done
    echo
    echo "Cold boot: kernel and initrd mapped copy-on-write (default) against copied"
    echo "(\`--copy-boot-files\`), medians, ms since \`ember vm run\` started:"
    echo
    echo "| phase | mapped | copied |"
    echo "|---|---:|---:|"
    for ph in "KVM VM + guest memory ready" "kernel + initrd loaded" \
        "VM created (KVM, memory, kernel, devices)" "first KVM_RUN" \
        "/init started (boot timer 1)" "agent ready (boot timer 123)"; do
        echo "| $ph | $(median cold "$ph") | $(median copy "$ph") |"
    done
    echo
    echo "Snapshot:"
    sed -n '/=== BEGIN snap-make/,/=== END snap-make/p' "$log" | grep -E 'ember: snapshot|memory$|state$' || true
    echo
    grep -E '^memory (cold|restore) ' "$log" || echo "(no memory figures)"
} | tee "$OUT/table.md"
