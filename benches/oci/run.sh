#!/bin/sh
# OCI startup benchmark: `podman run --rm IMAGE true` wall time with ember beside runc, for
# busybox and a 240 MiB image (ember's extra over runc for each, and their ratio), in the
# Debian root (scripts/build-debian-host.sh) of the virtual KVM host, plus one ember container
# split by runc operation (create with ember's phases: rootfs image, pod VM start, container
# create; start-to-exit; rm). Prints a table.
#
# Usage: benches/oci/run.sh [RUNS]            (RUNS per runtime, default 3)
# Also: a container joining a running CRI pod (disk slot) against one with its own VM,
# `ctr run --rm busybox true` through containerd's runc shim and ember's shim v2, and a podman
# pod's start and `run --rm --pod` members.
# Env:   EMBER_RIG            path to ember-rig (default: PATH, else target/*/ember-rig)
#        EMBER_BASELINE       an earlier static ember: measured in the same runs as ember-base
#        EMBER_DEBIAN_IMAGE   the Debian image (default /var/cache/ember/debian-host.ext4)
#        OUT                  directory for the console log and the table (default: temp dir)
#        EMBER_OCI_BENCH_PARTS  which parts (default "podman phases cri ctr pod")
# Needs what `ember-rig run` needs (host kernel, static ember, guest artifacts, QEMU) and the
# Debian image.
set -eu

RUNS=${1:-3}
OUT=${OUT:-$(mktemp -d /tmp/ember-oci-bench.XXXXXX)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
image=${EMBER_DEBIAN_IMAGE:-/var/cache/ember/debian-host.ext4}
[ -f "$image" ] || { echo "run.sh: $image missing (scripts/build-debian-host.sh)" >&2; exit 1; }

rig=${EMBER_RIG:-$(command -v ember-rig 2>/dev/null || true)}
if [ -z "$rig" ]; then
    rig=$(ls -t "$root"/target/*/release/ember-rig "$root"/target/*/debug/ember-rig \
        "$root"/target/release/ember-rig "$root"/target/debug/ember-rig 2>/dev/null | head -n1 || true)
fi
[ -n "$rig" ] && [ -x "$rig" ] || { echo "run.sh: ember-rig not found (cargo build -p ember-rig)" >&2; exit 1; }

mkdir -p "$OUT"
scenario=$OUT/oci-bench.sh
log=$OUT/console.log
{
    echo "RUNS=$RUNS"
    echo "PARTS=\"${EMBER_OCI_BENCH_PARTS:-podman phases cri ctr pod}\""
    cat "$here/scenario-oci-bench.sh"
} >"$scenario"

# The Debian disk (snapshot: the image is never written) and memory for podman + a guest.
EMBER_RIG_QEMU_ARGS="-M microvm,acpi=off -m 3072 -drive file=$image,if=none,id=debian,format=raw,snapshot=on -device virtio-blk-device,drive=debian" \
    "$rig" run --scenario "$scenario" --log "$log" --quiet --timeout $((600 + RUNS * 3 * 300)) \
    ${EMBER_BASELINE:+--add "$EMBER_BASELINE:/usr/local/bin/ember-base"} || true

awk -v runs="$RUNS" '
/^=== BEGIN bench-(ctr-)?(runc|ember|ember-base)(-(busybox|big))?-[0-9]/ {
    key = $3; sub(/^bench-/, "", key); sub(/-[0-9]+$/, "", key); next
}
/^wall_ms=/ && key != "" {
    split($1, w, "="); split($2, r, "=")
    if (r[2] == 0) { n[key]++; v[key, n[key]] = w[2] } else { bad[key]++ }
    key = ""; next
}
/^op=/ { split($1, o, "="); split($2, t, "="); split($3, w, "="); op[t[2], o[2]] = w[2] }
/^phases rt=/ { split($2, t, "="); ph[t[2]] = substr($0, length($1 $2) + 3) }
/^cri kind=/ { split($2, ck, "="); split($3, cm, "="); cri[ck[2]] = cri[ck[2]] " " cm[2] }
/^podmember op=/ { split($2, o, "="); split($3, t, "="); split($4, w, "="); pm[t[2]] = pm[t[2]] " " o[2] " " w[2] }
/^podmember phases rt=/ { split($3, t, "="); pmph[t[2]] = substr($0, length($1 $2 $3) + 4) }
/^podop=/ {
    split($1, o, "="); split($2, t, "="); split($3, w, "="); split($4, r, "=")
    pod[t[2], o[2]] = pod[t[2], o[2]] " " (r[2] == 0 ? w[2] : "failed")
}
function median(key,   m, i, j, tmp) {
    m = n[key] + 0
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++)
        if (v[key, j] + 0 < v[key, i] + 0) { tmp = v[key, i]; v[key, i] = v[key, j]; v[key, j] = tmp }
    return m > 0 ? v[key, int((m + 1) / 2)] : ""
}
END {
    split("runc ember-base ember", rts, " ")
    split("busybox big", imgs, " ")
    for (g = 1; g <= 2; g++) for (k = 1; k <= 3; k++) {
        key = rts[k] "-" imgs[g]
        m = n[key] + 0
        if (m == 0 && bad[key] == 0) continue
        if (!podman++)
            printf "%-10s %-8s %5s %10s %10s %10s %6s %14s\n", "runtime", "image", "runs", "min_ms", "median_ms", "max_ms", "failed", "extra_vs_runc"
        med[key] = median(key)
        if (m > 0) {
            extra = "-"
            rk = "runc-" imgs[g]
            if (rts[k] != "runc" && med[rk] != "") extra = med[key] - med[rk]
            printf "%-10s %-8s %5d %10d %10d %10d %6d %14s\n", rts[k], imgs[g], m, v[key, 1], med[key], v[key, m], bad[key], extra
        } else printf "%-10s %-8s %5d %10s %10s %10s %6d %14s\n", rts[k], imgs[g], 0, "-", "-", "-", bad[key], "-"
    }
    for (k = 2; k <= 3; k++) {
        a = med[rts[k] "-busybox"] - med["runc-busybox"]; b = med[rts[k] "-big"] - med["runc-big"]
        if (med[rts[k] "-big"] != "" && med[rts[k] "-busybox"] != "" && a > 0)
            printf "%s: extra over runc, big image / busybox = %.2f\n", rts[k], b / a
    }
    for (k = 1; k <= 3; k++) {
        rt = rts[k]
        if (op[rt, "create"] == "") continue
        print ""
        print rt ", one container by runc operation (ms):"
        printf "  create (podman init)         %s\n", op[rt, "create"]
        printf "  start-to-exit (start -a)     %s\n", op[rt, "start-to-exit"]
        printf "  rm                           %s\n", op[rt, "rm"]
        if (ph[rt] != "") print rt " create phases (ms): " ph[rt]
    }
    if (cri["member"] cri["single"] != "") {
        print ""
        print "ember runc CLI, create + start + true + delete (ms, each run):"
        printf "  member of a running CRI pod  %s\n", cri["member"]
        printf "  container with its own VM    %s\n", cri["single"]
    }
    header = 0
    for (k = 1; k <= 3; k++) {
        rt = rts[k]
        if (pod[rt, "start"] == "") continue
        if (!header++) { print ""; print "podman pod (ms, each run):" }
        printf "  %-10s pod start%s; run --rm --pod true:%s\n", rt, pod[rt, "start"], pod[rt, "member"]
        if (pm[rt] != "") printf "  %-10s one member by operation (ms):%s\n", rt, pm[rt]
        if (pmph[rt] != "") printf "  %-10s member create phases (ms): %s\n", rt, pmph[rt]
    }
    header = 0
    for (k = 1; k <= 3; k++) {
        key = "ctr-" rts[k]
        if (n[key] + bad[key] == 0) continue
        if (!header) {
            print ""
            print "ctr run --rm busybox true (containerd; runc: its runc shim, ember: ember'"'"'s shim v2):"
            printf "%-10s %5s %10s %10s %10s %6s %14s\n", "runtime", "runs", "min_ms", "median_ms", "max_ms", "failed", "extra_vs_runc"
            header = 1
        }
        med[key] = median(key)
        extra = (rts[k] != "runc" && med["ctr-runc"] != "" && med[key] != "") ? med[key] - med["ctr-runc"] : "-"
        if (n[key] > 0)
            printf "%-10s %5d %10d %10d %10d %6d %14s\n", rts[k], n[key], v[key, 1], med[key], v[key, n[key]], bad[key], extra
        else printf "%-10s %5d %10s %10s %10s %6d %14s\n", rts[k], 0, "-", "-", "-", bad[key], "-"
    }
}' "$log" | tee "$OUT/table.txt"
echo "run.sh: console log $log" >&2
