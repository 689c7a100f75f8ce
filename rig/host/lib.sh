# Helpers for scenario scripts in ember's virtual KVM host (sourced before each scenario).
# shellcheck shell=sh

# section NAME CMD [ARG...]: runs CMD, printing `=== BEGIN NAME`, its output, `=== END NAME rc=N`.
section() {
    _name=$1
    shift
    echo "=== BEGIN $_name"
    "$@" 2>&1
    _rc=$?
    echo "=== END $_name rc=$_rc"
    return 0
}

# section_timeout SECS NAME CMD [ARG...]: like section, killing CMD after SECS (rc 137 then).
section_timeout() {
    _secs=$1
    shift
    _name=$1
    shift
    section "$_name" timeout -s KILL "$_secs" "$@"
}

# wait_for_line FILE PATTERN SECS [PID]: waits until FILE has a line matching PATTERN
# (grep -E); rc 1 on timeout, or as soon as process PID (the writer) has exited without
# printing it. Polls every 0.2 s.
wait_for_line() {
    _n=0
    _max=$(($3 * 5))
    while [ "$_n" -lt "$_max" ]; do
        grep -qE "$2" "$1" 2>/dev/null && return 0
        if [ -n "${4:-}" ] && ! kill -0 "$4" 2>/dev/null; then
            grep -qE "$2" "$1" 2>/dev/null
            return
        fi
        sleep 0.2
        _n=$((_n + 1))
    done
    return 1
}

# retry_host REASON: asks the rig to reboot the virtual host and run every scenario again.
retry_host() {
    # To the console itself: the caller's output may be redirected to a file.
    echo "=== RIG RETRY $*" >/dev/console
    sync
    reboot -f
}
