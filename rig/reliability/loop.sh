#!/usr/bin/env bash
# loop.sh RUNS LABEL [ember-rig run ARGS...]: boots the virtual host RUNS times with the given
# scenario arguments; prints one line per run and a tally, and appends them to
# $RIG_RESULTS (default /tmp/rig-reliability.txt). Env passes through (EMBER_RIG_CMDLINE,
# EMBER_RIG_QEMU_ARGS, ...), so settings can be compared without rebuilding.
set -uo pipefail
runs=${1:?usage: loop.sh RUNS LABEL ARGS...}
label=${2:?label}
shift 2
rig=${EMBER_RIG:-$(dirname "$0")/../../target/h-rig/debug/ember-rig}
results=${RIG_RESULTS:-/tmp/rig-reliability.txt}
logdir=${RIG_LOGDIR:-/tmp/rig-logs}
mkdir -p "$logdir"
pass=0 fail=0 sec_ok=0 sec_bad=0
for i in $(seq 1 "$runs"); do
    log=$logdir/$label-$i.log
    start=$(date +%s.%N)
    "$rig" run --quiet --log "$log" "$@" >/dev/null 2>"$log.summary"
    rc=$?
    end=$(date +%s.%N)
    ok=$(grep -c 'rc=0 ok' "$log.summary")
    bad=$(grep -c 'FAILED' "$log.summary")
    sec_ok=$((sec_ok + ok)) sec_bad=$((sec_bad + bad))
    outcome=$(grep -o 'ember-rig: [A-Za-z]*' "$log.summary" | head -1 | cut -d' ' -f2)
    [ "$rc" -eq 0 ] && pass=$((pass + 1)) || fail=$((fail + 1))
    line=$(printf '%s run %d: rc=%d outcome=%s sections ok=%d failed=%d wall=%.1fs' \
        "$label" "$i" "$rc" "$outcome" "$ok" "$bad" "$(echo "$end - $start" | bc)")
    echo "$line" | tee -a "$results"
done
echo "$label TOTAL: $pass/$runs host runs passed; sections ok=$sec_ok failed=$sec_bad (EMBER_RIG_CMDLINE='${EMBER_RIG_CMDLINE:-}' EMBER_RIG_QEMU_ARGS='${EMBER_RIG_QEMU_ARGS:-}' args: $*)" | tee -a "$results"
