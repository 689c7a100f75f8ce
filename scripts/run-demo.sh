#!/usr/bin/env bash
# The main job: set up (cached) and run a container in an ember microVM.
# On a host whose /dev/kvm runs guests, ember runs directly. On a /dev/kvm that cannot run a
# guest's user space (this project's development machines: kvm_pvm), it runs inside the
# virtual KVM host (QEMU TCG with emulated SVM) — test equipment; ember itself never starts QEMU.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
need_root

"$HERE/setup.sh"

reason=$(ember vm check 2>&1) && usable=1 || usable=0
if [ "$usable" = 1 ]; then
    log "This /dev/kvm runs guests: running ember directly"
    exec bash "$HERE/demo-scenario.sh"
fi
log "ember says: ${reason#ember: }"
log "So the demo runs inside the virtual KVM host (QEMU TCG emulating AMD SVM; about 15 s once set up)"
RIG=${CARGO_TARGET_DIR:-$EMBER_ROOT/target}/release/ember-rig
exec "$RIG" run --scenario "$HERE/demo-scenario.sh" --timeout 900 --stall 120 --attempts 3
