#!/bin/sh
# Boot-latency benchmark: boots the installed guest N times with `ember vm run --timings
# --exit-on-ready` inside the virtual KVM host (ember-rig run) and prints, per boot phase,
# min / median / max over the boots that reached "agent ready".
#
# Usage: benches/boot/run.sh [N]            (N defaults to 10)
# Env:   EMBER_RIG   path to ember-rig      (default: ember-rig on PATH, else target/*/ember-rig)
#        BOOT_ARGS   extra `ember vm run` arguments (e.g. "--mem-mib 256 --vcpus 2")
#        OUT         directory for the raw log and the table (default: a new temp dir)
# Needs what `ember-rig run` needs: /var/lib/ember/host/vmlinux, /usr/local/bin/ember (static),
# /var/lib/ember/guest/{vmlinux,initramfs.cpio}, qemu-system-x86_64 (see scripts/setup.sh).
set -eu

N=${1:-10}
BOOT_ARGS=${BOOT_ARGS:-}
OUT=${OUT:-$(mktemp -d /tmp/ember-boot-bench.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

rig=${EMBER_RIG:-}
if [ -z "$rig" ]; then
    rig=$(command -v ember-rig 2>/dev/null || true)
fi
if [ -z "$rig" ]; then
    rig=$(ls -t "$root"/target/*/release/ember-rig "$root"/target/*/debug/ember-rig \
        "$root"/target/release/ember-rig "$root"/target/debug/ember-rig 2>/dev/null | head -n1 || true)
fi
if [ -z "$rig" ] || [ ! -x "$rig" ]; then
    echo "run.sh: ember-rig not found (cargo build -p ember-rig, or set EMBER_RIG)" >&2
    exit 1
fi

mkdir -p "$OUT"
scenario="$OUT/boot-bench.sh"
log="$OUT/console.log"
cat >"$scenario" <<SCENARIO
# boot-bench: $N boots of the default guest, each in its own section boot-<i>.
i=1
while [ "\$i" -le $N ]; do
    section boot-\$i sh -c 'ember vm run --timings --exit-on-ready --timeout-s 120 \
        --console-file /tmp/boot-console.log $BOOT_ARGS; rc=\$?; tail -n 2 /tmp/boot-console.log; exit \$rc'
    i=\$((i + 1))
done
SCENARIO

echo "run.sh: $N boots in the virtual KVM host (log: $log)" >&2
"$rig" run --scenario "$scenario" --log "$log" --quiet --timeout $((120 + N * 150)) || true

# The --timings table: the phase name fills columns 1-44, "since start" (ms) columns 46-54.
awk '
/^=== BEGIN boot-/ { inb = 1; n = 0; delete v; next }
/^=== END boot-/ {
    split($0, a, "rc="); rc = a[2] + 0
    if (rc == 0) { ok++; for (k in v) print k "\t" v[k] > "/dev/stdout" } else { bad++ }
    inb = 0; next
}
inb && / ms/ && length($0) > 50 {
    name = substr($0, 1, 44); sub(/ +$/, "", name)
    val = substr($0, 46, 9); gsub(/ /, "", val)
    if (val != "-" && name != "phase") v[name] = val
}
END { printf "ok\t%d\nfailed\t%d\n", ok, bad > "/dev/stderr" }
' "$log" >"$OUT/samples.tsv" 2>"$OUT/counts.txt"

ok=$(awk -F'\t' '$1 == "ok" { print $2 }' "$OUT/counts.txt")
failed=$(awk -F'\t' '$1 == "failed" { print $2 }' "$OUT/counts.txt")
{
    echo "Boots: $N requested, ${ok:-0} reached agent ready, ${failed:-0} failed or timed out."
    echo
    echo "| phase (ms since \`ember vm run\` started) | min | median | max |"
    echo "|---|---:|---:|---:|"
    for phase in "process start (before vm run)" "KVM VM + guest memory ready" \
        "kernel + initrd loaded" "VM created (KVM, memory, kernel, devices)" "first KVM_RUN" \
        "first kernel output (serial)" "/init started (boot timer 1)" \
        "agent ready (boot timer 123)" "VM exited"; do
        awk -F'\t' -v p="$phase" '$1 == p { print $2 }' "$OUT/samples.tsv" | sort -g >"$OUT/one.txt"
        cnt=$(wc -l <"$OUT/one.txt")
        [ "$cnt" -gt 0 ] || continue
        min=$(head -n1 "$OUT/one.txt")
        max=$(tail -n1 "$OUT/one.txt")
        med=$(sed -n "$(((cnt + 1) / 2))p" "$OUT/one.txt")
        echo "| $phase | $min | $med | $max |"
    done
} | tee "$OUT/table.md"
