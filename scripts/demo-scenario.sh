# The main job: a container in an ember microVM. Runs wherever /dev/kvm can run a guest —
# directly on a hardware-KVM host, or inside the virtual KVM host (sourced by its /init after
# /rig/lib.sh, which defines `section`). Uses only the `ember` CLI.
command -v section >/dev/null 2>&1 || section() {
    _name=$1; shift
    echo "=== BEGIN $_name"; "$@" 2>&1; _rc=$?; echo "=== END $_name rc=$_rc"; return 0
}
export EMBER_ROOT=${EMBER_DEMO_ROOT:-/run/ember-demo}
POD=demo

demo_run() {
    ember pod delete --force $POD >/dev/null 2>&1
    echo "--- ember pod run $POD (boots a microVM inside the ember process, waits for its agent)"
    ember pod run --timings $POD || return 1
    echo "--- ember container create + start (busybox root of the guest)"
    ember container create $POD web --rootfs-guest-path / -- sleep 600 || return 1
    ember container start $POD web || return 1
    echo "--- ember container exec $POD web -- sh -c ..."
    ember container exec $POD web -- \
        sh -c 'echo "hello from a container in an ember microVM: $(uname -sr), hostname $(hostname)"' || return 1
    echo "--- ember container ps $POD web"
    ember container ps $POD web
    echo "--- a container's exit code: sh -c 'exit 3'"
    ember container create $POD three --rootfs-guest-path / -- sh -c 'exit 3' || return 1
    ember container start $POD three || return 1
    ember container wait $POD three; rc=$?
    echo "exit code $rc"
    echo "--- ember pod list"
    ember pod list
    ember pod stop $POD && ember pod delete $POD
    [ "$rc" -eq 3 ]
}
section demo demo_run
